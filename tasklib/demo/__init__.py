"""``tasklib demo``: example tasks (``tasklib.demo.tasks``) and the program that runs them beside a
worker and the dashboard. Shipped in the package, so ``pip install "tasklib[embedded]"`` then
``tasklib demo`` shows the product with nothing else installed."""
