"""Custom tools: give the model your own functions and values inside its REPL.

    python examples/custom_tools.py

Runs offline on the scripted test model, which writes the code a real model would:
it calls the ``lookup_rate`` tool and reads the ``VAT`` constant. Swap in
``backend="openai"`` (or ``-m``-style ``model="openai/gpt-4o-mini"``) for a real one.
"""

from __future__ import annotations

from rlm import RLM

RATES = {"EUR": 1.08, "GBP": 1.27, "JPY": 0.0067}


def lookup_rate(currency: str) -> float:
    """USD per unit of ``currency``."""
    return RATES[currency.upper()]


SCRIPT = [
    "Let me price the invoice with the tools I was given.\n"
    "```repl\n"
    "total_eur = sum(float(line.split()[-1]) for line in context.splitlines())\n"
    "usd = total_eur * lookup_rate('EUR') * (1 + VAT)\n"
    "print(round(usd, 2))\n"
    "```",
    "```repl\nanswer['content'] = f'{usd:.2f} USD including VAT'\nanswer['ready'] = True\n```",
]


def main() -> None:
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": SCRIPT},
        custom_tools={
            # A callable: the model calls it; the description goes into its prompt.
            "lookup_rate": {"tool": lookup_rate, "description": "USD per unit of a currency"},
            # A plain value: bound as a variable in the REPL.
            "VAT": 0.2,
        },
    )
    invoice = "widgets 100.00\ngadgets 50.00\nshipping 10.00"
    result = rlm.completion(invoice, root_prompt="What is the invoice total in USD with VAT?")
    print(result.response)


if __name__ == "__main__":
    main()
