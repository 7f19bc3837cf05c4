"""Kept only as a name: `Services` is `recomamp.services.adapters.Services`, opened by `recomamp.wiring`.

The run pipeline (daemon/pipeline.py) still imports it from here; once it imports it from its home, this goes."""

from recomamp.services.adapters import Services as Services
from recomamp.services.adapters import amc_policy as amc_policy
from recomamp.services.adapters import token_policy as token_policy
from recomamp.wiring import open_services as open_services
from recomamp.wiring import register_config_secrets as register_config_secrets
