"""Submit inside ``transaction.atomic()``: the task exists only if the request's transaction commits."""

from __future__ import annotations

from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import tasklib
from examples.django_app.shop.models import Order
from examples.django_app.shop.tasks import ship_order


class PaymentDeclined(Exception):
    pass


@csrf_exempt  # an API endpoint of the example; a real form keeps Django's CSRF check
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    try:
        with transaction.atomic():
            order = Order.objects.create(item=request.GET.get("item", "?"))
            # Django's connection is a DB-API connection inside the atomic block: the task row is
            # written in the same transaction as the order.
            task_id = tasklib.submit_task_in(connection, ship_order, order_id=order.id)
            if request.GET.get("fail"):
                raise PaymentDeclined("payment declined")
    except PaymentDeclined as exc:
        return JsonResponse({"error": str(exc)}, status=402)
    return JsonResponse({"order_id": order.id, "task_id": str(task_id)})
