"""Start-up checks whose failures are one line naming the setting to change."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from psp_core.checkpoint import CheckpointError, read_metadata
from psp_core.models import ModelConfig
from service.checkpoints.store import checkpoints_in
from service.settings import Settings


class StartupError(Exception):
    """A setting does not fit; the message is the one line to print."""


def describe_settings_error(error: ValidationError) -> str:
    """One line per bad setting, naming its `PSP_` variable."""
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem.get("loc", ())]
        message = str(problem.get("msg", "is invalid")).removeprefix("Value error, ")
        if location:
            name = "PSP_" + "__".join(location).upper()
            lines.append(f"{name}: {message}")
        else:
            lines.append(message)
    return "; ".join(lines)


def check_checkpoint_fits(settings: Settings) -> None:
    """Compares the newest checkpoint under `PSP_DATA_DIR` with the model settings.

    Raises:
        StartupError: It was made for another model or optimiser; the message names the
            fields that differ and what to do.
    """
    checkpoints = checkpoints_in(settings.checkpoint_dir)
    if not checkpoints:
        return
    newest = checkpoints[-1].path
    try:
        header = read_metadata(newest)
    except CheckpointError as err:
        raise StartupError(
            f"{err}; move it away, or point PSP_DATA_DIR at a new directory"
        ) from None
    wanted: dict[str, Any] = {
        f"PSP_MODEL__{k.upper()}": v for k, v in settings.model.to_config().to_dict().items()
    }
    stored: dict[str, Any] = {
        f"PSP_MODEL__{k.upper()}": v for k, v in _stored_model(header).items()
    }
    wanted["PSP_TRAINING__OPTIMIZER"] = settings.training.optimizer
    stored["PSP_TRAINING__OPTIMIZER"] = header.get("training_config", {}).get("optimizer")
    differ = [name for name in wanted if stored.get(name) != wanted[name]]
    if differ:
        made = ", ".join(f"{name}={_show(stored.get(name))}" for name in differ)
        now = ", ".join(f"{name}={_show(wanted[name])}" for name in differ)
        raise StartupError(
            f"the newest checkpoint {newest} was made with {made}, but the settings say {now}; "
            "point PSP_DATA_DIR at a new directory, or change the settings to match"
        )


def _stored_model(header: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's model config with the defaults of its time filled in (a checkpoint
    from before an option was added says what it did without it)."""
    stored: dict[str, Any] = header.get("model_config", {})
    try:
        return ModelConfig.from_dict(stored).to_dict()
    except (KeyError, TypeError, ValueError):
        return stored


def _show(value: Any) -> str:
    return str(value).replace(" ", "") if isinstance(value, list) else str(value)
