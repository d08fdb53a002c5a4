"""Every SQL statement TaskLib runs, by name and grouped by who runs it. Values are always bound.

``tasks`` (the table, submits, reads), ``worker`` (claim, finish, heartbeat, rescue, release),
``queues`` (queue settings, limits), ``fleet`` (the side tables: settings, worker presence),
``actions`` (cancel, retry, schedules, retention) and ``monitor`` (the read model). Each
state-changing statement names the transition it makes and filters on the state it expects.
Statements are planned afresh at each run, except the few wrapped in ``Prepared`` (``kinds``).
"""

from tasklib.sql.actions import *  # noqa: F403
from tasklib.sql.fleet import *  # noqa: F403
from tasklib.sql.kinds import *  # noqa: F403
from tasklib.sql.monitor import *  # noqa: F403
from tasklib.sql.queues import *  # noqa: F403
from tasklib.sql.tasks import *  # noqa: F403
from tasklib.sql.worker import *  # noqa: F403
