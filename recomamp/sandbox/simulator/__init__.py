"""A simulator of Login with Amazon and the AMC reporting API, over real HTTP (aiohttp), both on one port.

- `lwa.py`: the refresh grant and its errors by code; the consent page and the authorization-code grant.
- `amc.py`: discovery, executions, saved workflows and results, as ../shared/AMC_API.md publishes them, with
  the facts marked [unconfirmed] playable either way.
- `faults.py`: the one fault script both play from (per route, per user and per instance), and the calls
  each route received.
- `server.py`: `AmcSimulator`, which mounts the two on one port and is what the tests and the sandbox script.

`recomamp sandbox` (and `recomamp standalone`) serve it; its `/_sandbox/*` routes script it from outside,
each a POST of a JSON body (answered with JSON):
- `/_sandbox/consent` {"email": E, "decision": "approve"|"deny"}: who is signed in at "amazon.com" and what
  they answer on the consent page. Until it is set, the page answers access_denied, as Amazon does for a
  person who declines; `recomamp users authorize` then says so.
- `/_sandbox/users` {"email": E, "refresh_token"?: T, "instances"?: [ID…]}: a user Amazon knows, with a
  refresh token (answered) and AMC instances that discovery (GET /amc/instances) lists.
- `/_sandbox/revoke` {"email": E}: the user revokes consent; their refresh token stops working.
- `/_sandbox/faults` {"route": R, "faults": […], "user"?: E, "instance"?: ID}: answers to play next.
- `/_sandbox/instances/{ID}` {profile fields}: rows, files and timings of that instance's results.
- `/_sandbox/settings` {…}: the [unconfirmed] behaviours and the quota.
`GET /_sandbox/calls`: how many calls each route received.
"""

from recomamp.sandbox.simulator.amc import TERMINAL, InstanceProfile, SimExecution, SimInstance, Unconfirmed
from recomamp.sandbox.simulator.faults import ROUTES, Fault, Route
from recomamp.sandbox.simulator.server import AmcSimulator

__all__ = [
    "ROUTES",
    "TERMINAL",
    "AmcSimulator",
    "Fault",
    "InstanceProfile",
    "Route",
    "SimExecution",
    "SimInstance",
    "Unconfirmed",
]
