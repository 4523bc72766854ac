"""The configuration: every key with its default and comment (config_lib.base_config), the
presets of the paper and of later work, the reference code's facts, and what a key absent from
an older workdir's config.json meant (stored.from_json, stored.ABSENT_MEANS). Uses only infra."""
