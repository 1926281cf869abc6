"""A Python step, packaged as an image with `stepflow package docker examples/docker_steps/score.py:score`.

It receives the Input document and returns a Response (or a bare body)."""


def score(payload: dict) -> dict:
    words = payload["steps"]["count"]["body"]["words"]
    if words == 0:
        return {"status": 400, "body": {"error": "nothing to score"}}  # 4xx: not retried
    return {"status": 200, "body": {"score": min(100, words * 10)}}
