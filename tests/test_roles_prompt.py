"""Prompt rendering: a system prompt is rendered once per distinct value of what it uses."""

from __future__ import annotations

from autosafe_core.roles.base import Prompt


PROMPT = Prompt(name="t", version="1", system="Tools:\n{{ toolkits }}\n{% for k, v in scores.items() %}{{ k }}={{ v }} {% endfor %}", user="Do {{ task }}")


def test_the_same_system_values_give_the_very_same_text_and_other_values_their_own():
    first = PROMPT.render(toolkits="A, B", scores={"safe": 3}, task="one")
    second = PROMPT.render(toolkits="A, B", scores={"safe": 3}, task="two")
    other = PROMPT.render(toolkits="C", scores={"safe": 3}, task="one")
    rescored = PROMPT.render(toolkits="A, B", scores={"safe": 2}, task="one")
    assert first[0].content is second[0].content and first[1].content != second[1].content
    assert first[0].content == "Tools:\nA, B\nsafe=3"
    assert other[0].content == "Tools:\nC\nsafe=3"
    assert rescored[0].content == "Tools:\nA, B\nsafe=2"


def test_a_value_that_cannot_be_a_key_still_renders():
    prompt = Prompt(name="t", version="1", system="{{ tools | length }} tools", user="go")
    assert prompt.render(tools=[{1, 2}, {3}])[0].content == "2 tools"
