import pytest

from instructmt.errors import ConfigError
from instructmt.prompts.render import PromptRenderer, parse_encoding, render_prompt
from instructmt.tasks.schema import Example, Instance, Task

TASK = Task(
    name="task999_demo", family="natural_instructions",
    definition="Answer with the capital of the country",
    positive_examples=[Example("France", "Paris", "Paris is the capital of France"),
                       Example("Japan?", "Tokyo", "Tokyo is Japan's capital.")],
    negative_examples=[Example("Italy", "Milan", "Milan is not the capital"), Example("Peru", "Cusco!", "")],
    instances=[Instance("i1", "Spain", ["Madrid"])])


def test_definition_only():
    assert render_prompt(TASK, TASK.instances[0], "def") == (
        "Definition: Answer with the capital of the country.\n\n"
        "Now complete the following example -\nInput: Spain.\nOutput: ")


def test_def_pos2_golden():
    assert render_prompt(TASK, TASK.instances[0], "def+pos2") == (
        "Definition: Answer with the capital of the country.\n\n"
        " Positive Example 1 -\nInput: France.\n Output: Paris.\n\n"
        " Positive Example 2 -\nInput: Japan?\n Output: Tokyo.\n\n"
        "Now complete the following example -\nInput: Spain.\nOutput: ")


def test_pos2_only():
    assert render_prompt(TASK, TASK.instances[0], "pos2") == (
        " Positive Example 1 -\nInput: France.\n Output: Paris.\n\n"
        " Positive Example 2 -\nInput: Japan?\n Output: Tokyo.\n\n"
        "Now complete the following example -\nInput: Spain.\nOutput: ")


def test_def_pos2_neg2_expl_with_name_golden():
    assert render_prompt(TASK, TASK.instances[0], "name+def+pos2+neg2+expl") == (
        "task999_demo. Definition: Answer with the capital of the country.\n\n"
        " Positive Example 1 -\nInput: France.\n Output: Paris.\n Explanation: Paris is the capital of France.\n\n"
        " Positive Example 2 -\nInput: Japan?\n Output: Tokyo.\n Explanation: Tokyo is Japan's capital.\n\n"
        " Negative Example 1 -\nInput: Italy.\n Output: Milan.\n Explanation: Milan is not the capital.\n\n"
        " Negative Example 2 -\nInput: Peru.\n Output: Cusco!\n\n"
        "Now complete the following example -\nInput: Spain.\nOutput: ")


def test_examples_added_only_while_source_fits():
    words = lambda s: len(s.split())  # noqa: E731  a whitespace "tokenizer"
    full = render_prompt(TASK, TASK.instances[0], "def+pos2")
    one = render_prompt(TASK, TASK.instances[0], "def+pos1")
    r = PromptRenderer("def+pos2", length_fn=words, max_source_length=words(full) - 1)
    assert r.render(TASK, TASK.instances[0]) == one
    r0 = PromptRenderer("def+pos2", length_fn=words, max_source_length=1)
    assert r0.render(TASK, TASK.instances[0]) == render_prompt(TASK, TASK.instances[0], "def")


def test_retrieved_demos_replace_positive_examples():
    demos = [Example("Chile", "Santiago", id="x1")]
    text = PromptRenderer("def+pos2").render(TASK, TASK.instances[0], demos=demos)
    assert "Input: Chile.\n Output: Santiago." in text and "France" not in text


def test_unknown_encoding_part_is_a_clear_error():
    with pytest.raises(ConfigError, match="part 'pos'"):
        parse_encoding("def+pos")


def test_prompt_show_cli(capsys):
    from instructmt.cli import main
    assert main(["prompt", "show", "task951_min_number", "--encoding", "def+pos1", "--show-target"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Definition: You are given a list of numbers.")
    assert "Positive Example 2" not in out and "--- target(s):" in out


def test_overflowing_retrieved_demos_drop_the_least_similar_first():
    words = lambda s: len(s.split())  # noqa: E731
    demos = [Example("far one with many extra words here", "x", id="far"), Example("Chile", "Santiago", id="near")]
    with_both = PromptRenderer("def+pos2").render(TASK, TASK.instances[0], demos=demos)
    r = PromptRenderer("def+pos2", length_fn=words, max_source_length=words(with_both) - 1)
    text = r.render(TASK, TASK.instances[0], demos=demos)
    assert "Chile" in text and "far one" not in text
