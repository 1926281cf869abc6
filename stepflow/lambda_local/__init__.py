"""`stepflow lambda serve DIR`: AWS Lambda on the developer's machine.

Serves the Lambda Invoke API (what the lambda runtime calls) and, to each warm worker process, the Lambda
Runtime API (what AWS's own runtime interface client, `awslambdaric`, polls). Handlers therefore run exactly
as on AWS: same bootstrap, same event/context, same error reporting.
"""

from stepflow.lambda_local.functions import LocalFunction, discover_functions
from stepflow.lambda_local.server import LocalLambda

__all__ = ["LocalFunction", "LocalLambda", "discover_functions"]
