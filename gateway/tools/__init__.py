"""Operator tools for the whole mesh: the `meshserve` CLI, `up` and its launcher, `chat`, the
demo and the offline tiny-model builder it runs on."""
