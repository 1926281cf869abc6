"""The Lambda step, packaged with `stepflow package lambda examples/lambda_steps/score.py:score -o dist/score.zip`.

The Lambda event is the step's Input document; the return value is the Response. Nothing here imports
stepflow: the handler shim that the packager adds (`stepflow_handler.handler`) calls `score(event)`.
"""

import json


def score(payload: dict) -> dict:
    order = payload["steps"]["prepare"]["body"]  # the in-process step's result
    if order["items"] == 0:
        # API Gateway's field names work too: `statusCode`, and a `body` holding a JSON string.
        # A 4xx is final: the engine does not retry it.
        return {"statusCode": 400, "body": json.dumps({"error": f"order {order['order']} has no items"})}
    points = min(100, round(order["total"] / 10))
    return {"status": 200, "body": {"order": order["order"], "score": points,
                                     "tier": "gold" if points >= 50 else "standard"}}
