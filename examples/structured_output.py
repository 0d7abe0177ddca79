"""Structured output: ask for an answer that matches a Pydantic model (or a JSON Schema).

    python examples/structured_output.py

Runs offline on the scripted test model, which plays a model that first gets the
format wrong: its answer is validated, the validation message goes back to it, and
it corrects itself. ``result.parsed`` is then an ``Invoice``; ``result.response`` is
the JSON text. With a real model, change only the backend, e.g.
``RLM(backend="openai", backend_kwargs={"model_name": "gpt-4o-mini"})``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from rlm import RLM
from rlm.utils.exceptions import StructuredOutputError


class Invoice(BaseModel):
    vendor: str
    number: str
    total: float
    currency: Literal["EUR", "USD"]


CONTEXT = "\n".join(
    [
        "From: Acme Tools GmbH <billing@acme.example>",
        "Subject: Invoice INV-2291",
        "",
        "Dear customer, please find attached invoice INV-2291 for the annual service.",
        "Vendor: Acme Tools",
        "Amount due: 1,240.00 EUR, payable within 30 days.",
        "Thank you for your business.",
    ]
)


def fence(code: str) -> str:
    return f"```repl\n{code}\n```"


def scripted_model(messages: list[dict[str, Any]]) -> str:
    """Stands in for a language model: reads the conversation, answers with code."""
    last = str(messages[-1]["content"])
    seen = "\n".join(str(m["content"]) for m in messages)
    if "was not accepted" in seen:
        # The validation message said what was wrong: total must be a number.
        return fence(
            "import json\n"
            "amount = float(line.split(':')[1].split()[0].replace(',', ''))\n"
            "answer['content'] = json.dumps({'vendor': 'Acme Tools', 'number': 'INV-2291', "
            "'total': amount, 'currency': 'EUR'})\n"
            "answer['ready'] = True"
        )
    if "Turn 1 of" in last:
        return fence("line = [l for l in context.splitlines() if 'Amount' in l][0]\nprint(line)")
    # A first attempt that copies the amount as text.
    return fence(
        "import json\n"
        "answer['content'] = json.dumps({'vendor': 'Acme Tools', 'number': 'INV-2291', "
        "'total': '1,240.00', 'currency': 'EUR'})\n"
        "answer['ready'] = True"
    )


def main() -> None:
    rlm = RLM(backend="scripted", backend_kwargs={"responses": scripted_model})
    try:
        result = rlm.completion(
            CONTEXT, root_prompt="Extract the invoice.", response_format=Invoice
        )
    except StructuredOutputError as exc:  # every try was rejected
        print(f"no valid answer after {exc.attempts} tries: {exc.validation_error}")
        raise SystemExit(1) from None
    history = rlm.client.calls[-1]  # what the model saw on its last turn
    rejected = sum("was not accepted" in str(m["content"]) for m in history)
    print(f"answer rejected {'once' if rejected == 1 else f'{rejected} times'}, then accepted")
    print(f"response (JSON text): {result.response}")
    invoice: Invoice = result.parsed
    print(f"parsed: {invoice!r}")
    print(f"total + 10% tax: {invoice.total * 1.1:.2f} {invoice.currency}")


if __name__ == "__main__":
    main()
