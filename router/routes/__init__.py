"""The route table: one module per route, each registering its `RouteSpec` (router.routes.base).

Importing this package registers the built-in routes. A route declared elsewhere (a plugin, a test) registers
when its module is imported; the system config's `modules:` list imports such modules wherever the config loads.
"""

# Registration order is the table order (DET SEG GRD POSE GEN EDIT), as the model config lists them.
from router.routes import det, seg, grd, pose, gen, edit  # noqa: F401, I001  (registers the built-in routes)
from router.routes.base import ROUTES, RouteSpec, register_route, route_decoders, route_spec

BUILTIN_ROUTES = ("DET", "SEG", "GRD", "POSE", "GEN", "EDIT")

__all__ = ["BUILTIN_ROUTES", "ROUTES", "RouteSpec", "register_route", "route_decoders", "route_spec"]
