"""Chat templates (``--chat-template``): demonstrations as turns or in one user message, the
exact rendered text in predictions, a shared prefix the engine can cache, no doubled BOS."""

from __future__ import annotations

import copy

import pytest
from tokenizers import processors

from iclft.errors import UserError
from iclft.icl.engine import Engine
from iclft.icl.evaluate import EvalSpec, evaluate_task
from iclft.icl.prompts import ChatFormat, DemoPool
from iclft.tasks import get_task

# SmolLM2's template (ChatML with a default system turn), as its tokenizer ships it
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# a Gemma-like template that writes the BOS token itself
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<turn>{{ m['role'] }}\n{{ m['content'] }}<end>\n"
    "{% endfor %}{% if add_generation_prompt %}<turn>model\n{% endif %}"
)


@pytest.fixture
def chat_tok(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = CHATML
    return tok


def _demo_and_query(k=2):
    task = get_task("parity")
    q = task.generate("clean", 1, 0)[0]
    return task, q, DemoPool(task, 0, "shared", k).demos(q, 0, k)


def test_turns_render_each_demonstration_as_a_user_and_an_assistant_turn(chat_tok):
    task, q, demos = _demo_and_query()
    prefix, text = ChatFormat(chat_tok, "turns").render(task, q, demos)
    lead = task.answer_lead
    expected = (
        "<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n"
        f"<|im_start|>user\n{task.instruction}\n\n{demos[0].question}<|im_end|>\n"
        f"<|im_start|>assistant\n{lead} {demos[0].target}<|im_end|>\n"
        f"<|im_start|>user\n{demos[1].question}<|im_end|>\n"
        f"<|im_start|>assistant\n{lead} {demos[1].target}<|im_end|>\n"
        f"<|im_start|>user\n{q.question}<|im_end|>\n"
        f"<|im_start|>assistant\n{lead}"
    )
    assert text == expected
    assert text.startswith(prefix) and prefix.endswith("<|im_start|>user\n")


def test_single_puts_the_plain_prompt_in_one_user_turn(chat_tok):
    task, q, demos = _demo_and_query()
    prefix, text = ChatFormat(chat_tok, "single").render(task, q, demos)
    body = "\n\n".join([task.instruction, *(task.render_demo(d) for d in demos), q.question])
    assert text.endswith(f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"
                         f"{task.answer_lead}")  # fmt: skip
    assert text.startswith(prefix) and q.question not in prefix


def test_a_template_that_writes_bos_is_not_given_a_second_one(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    bos_id = tok.convert_tokens_to_ids("<bos>")
    tok.bos_token = "<bos>"
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos_id)]
    )
    tok.chat_template = BOS_TEMPLATE
    task, q, demos = _demo_and_query(1)
    _, text = ChatFormat(tok, "turns").render(task, q, demos)
    assert not text.startswith("<bos>")
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert ids[0] == bos_id and ids.count(bos_id) == 1


def test_eval_with_a_chat_template_writes_the_rendered_prompt(tiny_models, chat_tok):
    eng = Engine(tiny_models["llama"], chat_tok, batch_size=8, max_new_tokens=3)
    spec = EvalSpec(
        tasks=("parity",), variants=("clean",), shots=(0, 2), n=3, chat_template="turns"
    )
    task = get_task("parity")
    out = evaluate_task(eng, task, spec, model_label="tiny")
    fmt = ChatFormat(chat_tok, "turns")
    pools = DemoPool(task, 0, "shared", 2)
    for p in out.predictions:
        q = next(x for x in task.generate("clean", 3, 0) if x.id == p.id)
        assert p.prompt == fmt.render(task, q, pools.demos(q, 0, p.shots))[1]
        assert p.chat_template == "turns"
    assert eng.stats.prefix_tokens > 0  # the shared turns were cached once


def test_a_tokenizer_without_a_chat_template_is_refused_in_one_line(tiny_models, tiny_tokenizer):
    eng = Engine(tiny_models["llama"], tiny_tokenizer, batch_size=8, max_new_tokens=3)
    spec = EvalSpec(tasks=("parity",), shots=(0,), n=1, chat_template="single")
    with pytest.raises(UserError, match="needs a tokenizer with a chat template"):
        evaluate_task(eng, get_task("parity"), spec, model_label="tiny")
    with pytest.raises(ValueError, match="unknown chat template mode"):
        EvalSpec(tasks=("parity",), chat_template="multi")
