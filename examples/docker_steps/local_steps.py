"""In-process steps of the mixed workflow (runtime `inprocess`, handler `local_steps:summarize`)."""


def summarize(payload: dict) -> dict:
    steps = payload["steps"]
    return {"document": payload["event"]["data"]["id"], "words": steps["count"]["body"]["words"],
            "score": steps["score"]["body"]["score"], "fetched_by": steps["fetch"]["body"]["server"]}
