"""The operator's page, `/ui`: every tenant's counts, accuracy and drift, one page per tenant,
and the model's state, rendered on the server with inline SVG charts."""

from service.ui.routes import router

__all__ = ["router"]
