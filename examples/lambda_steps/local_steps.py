"""The in-process step of the workflow (runtime `inprocess`, handler `local_steps:prepare`), and the same
logic as a plain function for the SDK function in orders_app.py."""


def order_summary(data: dict) -> dict:
    items = data.get("items", [])
    return {"order": data["order"], "items": len(items),
            "total": sum(item["qty"] * item["price"] for item in items)}


def prepare(payload: dict) -> dict:
    return {"status": 200, "body": order_summary(payload["event"]["data"])}
