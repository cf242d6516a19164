"""Put an OpenAI API on your own Python code (docs/frontend.md).

from manifold.frontend import OpenAIFrontend

def answer(messages, **kwargs):
    return "You said: " + messages[-1]["content"]

app = OpenAIFrontend(answer, prefix="/v1")   # an ASGI app: uvicorn, or mount it in FastAPI/Starlette
"""

from manifold.frontend.app import Endpoint, OpenAIFrontend
from manifold.providers.python_handler.errors import HTTPError, Response

__all__ = ["Endpoint", "HTTPError", "OpenAIFrontend", "Response"]
