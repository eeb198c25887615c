"""Base class of every config section: unknown keys are errors, assignments are validated,
and no float field (strategy parameters included) accepts inf or NaN."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
