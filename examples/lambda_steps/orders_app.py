"""A code function (SDK) whose second step runs in the Lambda `score`.

`ctx.step.lambda_` sends the step contract's Input (with the `prepare` step's result under
`steps.prepare`) as the Lambda event and returns the body of its 2xx answer; a 4xx raises StepError here.
Which Lambda endpoint is called comes from $STEPFLOW_LAMBDA_ENDPOINT (the local Lambda), or AWS's own.
"""

from local_steps import order_summary

import stepflow

app = stepflow.App("orders")


@app.function(id="check-order", trigger=stepflow.event("orders/check"), retries=2)
async def check_order(ctx: stepflow.Context) -> dict:
    summary = await ctx.step.run("prepare", order_summary, ctx.event.data)
    try:
        scored = await ctx.step.lambda_("score", function="score")
    except stepflow.StepError as exc:  # the Lambda answered 4xx: exc.details has its status and body
        return {"order": summary["order"], "accepted": False, "status": exc.details.get("status"),
                "reason": (exc.details.get("body") or {}).get("error")}
    return {"order": summary["order"], "accepted": True, "tier": scored["tier"], "score": scored["score"]}
