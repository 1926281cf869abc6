"""`stepflow lambda serve DIR`: AWS Lambda on the developer's machine.

Serves the Lambda Invoke API (what the lambda runtime calls) and, to each warm worker process, the Lambda
Runtime API (what AWS's own runtime interface client, `awslambdaric`, polls). Handlers therefore run exactly
as on AWS: same bootstrap, same event/context, same error reporting.
"""

from stepflow.lambda_local.server import LocalLambda, LocalFunction, discover_functions

__all__ = ["LocalFunction", "LocalLambda", "discover_functions"]
