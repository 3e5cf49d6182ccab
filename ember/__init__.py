"""Ember: LLM programs as plain Python functions, compiled.

    from ember import models, jit
    fast = jit(lambda text: models("sim", f"Analyze: {text}"))
"""

from ._cache import cache
from ._compose import chain, ensemble
from ._inspect import inspect
from ._jit import jit
from ._models import amodels, models
from ._op import op
from ._reliability import retry, timeout
from ._report import RunReport, record
from ._response import Response, Usage
from ._vmap import vmap
from .backends.limits import configure_limits
from .errors import (
    AuthenticationError, BadRequestError, BatchError, ConfigurationError, ContextLengthError,
    EmberError, MissingAPIKeyError, ModelNotFoundError, ParseError, ProviderError,
    QuotaExceededError, RateLimitError, ResponseFormatError, ServerError, TimeoutError,
    TraceError,
)

__version__ = "0.1.0"

__all__ = [
    "models", "amodels", "Response", "Usage", "jit", "vmap", "op", "chain", "ensemble",
    "inspect", "record", "RunReport", "retry", "timeout", "cache", "configure_limits",
    "EmberError", "ConfigurationError", "MissingAPIKeyError", "TraceError", "ParseError",
    "TimeoutError", "ProviderError", "AuthenticationError", "ModelNotFoundError",
    "BadRequestError", "ContextLengthError", "RateLimitError", "QuotaExceededError",
    "ServerError", "ResponseFormatError", "BatchError", "__version__",
]
