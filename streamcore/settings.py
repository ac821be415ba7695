"""The one typed settings object: every section of :mod:`streamcore.sections`, read from the environment.

Every setting is a ``STYLESTREAM_*`` environment variable or a key of the TOML/JSON file named by
``STYLESTREAM_CONFIG_FILE`` (the variable's name without the prefix, lower-case; the environment wins). The
sections group them by who reads them: a collaborator takes the section it uses (``settings.kafka``,
``settings.redis``...). Each section is a settings class of its own, so ``Settings()`` reads every
section from the environment, and a section can be read alone (``RedisSettings()``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from streamcore.sections import (
    PREFIX,
    ClassifySettings,
    EmbeddedSettings,
    FaultSettings,
    FetchSettings,
    KafkaSettings,
    LimitsSettings,
    MetricsSettings,
    ProfilesSettings,
    RedisSettings,
    Section,
    SecuritySettings,
    ServingSettings,
    TextSettings,
    TrainerSettings,
    UISettings,
)


class Settings(BaseModel):
    """All configuration, one section per concern; ``Settings()`` reads every section from the environment
    and the config file.

    Built from variable names (``Settings.named(max_batch=8)``: the name without ``STYLESTREAM_``, lower-case,
    as in the config file) or from sections (``Settings(redis=RedisSettings(url=...))``); sections not given
    come from the environment.
    """

    model_config = ConfigDict(frozen=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    classify: ClassifySettings = Field(default_factory=ClassifySettings)
    text: TextSettings = Field(default_factory=TextSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    profiles: ProfilesSettings = Field(default_factory=ProfilesSettings)
    ui: UISettings = Field(default_factory=UISettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    faults: FaultSettings = Field(default_factory=FaultSettings)

    #: Variable name (``STYLESTREAM_`` + name upper-cased) → (section, field); filled below.
    NAMES: ClassVar[dict[str, tuple[str, str]]] = {}

    @classmethod
    def sections(cls) -> dict[str, type[Section]]:
        """Section name → its settings class."""
        return {name: field.annotation for name, field in cls.model_fields.items()}

    @classmethod
    def named(cls, **values: Any) -> Settings:
        """Settings with these values by name (``max_batch``, ``redis_url``...); the rest from the environment.

        Raises:
            TypeError: a name that is no setting.
            pydantic.ValidationError: a value that is not valid for its setting.
        """
        grouped = _group(values)
        sections = cls.sections()
        return cls(**{section: sections[section](**fields) for section, fields in grouped.items()})

    def replace(self, **values: Any) -> Settings:
        """A copy with these values by name (as :meth:`named`), validated again."""
        update = {}
        for section, fields in _group(values).items():
            current = getattr(self, section)
            update[section] = type(current).model_validate({**{f: getattr(current, f) for f in type(current).model_fields}, **fields})
        return self.model_copy(update=update)

    def given(self) -> set[str]:
        """The names (as :meth:`named` takes them) set by the environment, the config file or an argument, not
        left at their defaults."""
        return {name for name, (section, field) in self.NAMES.items() if field in getattr(self, section).model_fields_set}

    @classmethod
    def variable(cls, section_title: str, field: str) -> str | None:
        """The environment variable of a section's field (a validation error's title and location), if any."""
        for section in cls.sections().values():
            if section.__name__ == section_title:
                variables = section.variables()
                return variables.get(field) or (field.upper() if field.upper() in variables.values() else None)
        return None

    def child_env(self) -> dict[str, str]:
        """Environment for a child process that should see these settings (``kafka``, ``redis_url``...)."""
        env = dict(os.environ)
        for name, (section, field) in self.NAMES.items():
            value = getattr(getattr(self, section), field)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"{PREFIX}{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
        return env


for _section, _cls in Settings.sections().items():
    for _field, _variable in _cls.variables().items():
        Settings.NAMES[_variable.removeprefix(PREFIX).lower()] = (_section, _field)


def _group(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Values by name → {section: {field: value}}."""
    grouped: dict[str, dict[str, Any]] = defaultdict(dict)
    for name, value in values.items():
        if name not in Settings.NAMES:
            raise TypeError(f"no setting {name!r} (STYLESTREAM_{name.upper()})")
        section, field = Settings.NAMES[name]
        grouped[section][field] = value
    return grouped

TOPICS = ("posts", "hints", "labels", "posts.dlq", "model-updates", "feedback", "catalogue")
