"""ARHN/PRHN prompts and the judge requests built from them: stage 1 (extract a verbatim
snippet per document) and the ranking (of snippets, or of passages for PRHN). Each
prompt has a version, recorded with every judgment in the store."""

from __future__ import annotations

from builders.judges.endpoints.base import Backend, Constraint, GenerateRequest
from builders.methods.arhn.ranking import ranking_regex
from builders.methods.arhn.settings import ArhnSettings
from builders.methods.arhn.snippets import extract_regex

EXTRACT_VERSION = "arhn-extract-v1"
RANK_VERSION = "arhn-rank-v1"
PRHN_RANK_VERSION = "prhn-rank-v1"

EXTRACT_SYSTEM = "You find evidence in documents. You copy text exactly as written and never invent it."
EXTRACT_PROMPT = """Question: {query}

{documents}

For each of the {n} documents above, copy the part that answers the question, or write NO_ANSWER.
- Copy character for character from that document: no paraphrasing, no fixed spelling, casing or punctuation, nothing added.
- One contiguous span, best one to three sentences. A partial answer or supporting evidence counts.
- Write NO_ANSWER only when nothing in the document helps to answer the question.
- Judge every document on its own; the question is the same for all of them.

Reply with exactly {n} blocks, doc1 to doc{n}, in this form and nothing else:
[[[doc1]]]
<copied snippet or NO_ANSWER>
[[[/doc1]]]"""

RANK_SYSTEM = "You rank {items} by how well they answer a question."
RANK_PROMPT = """Question: {query}

{items}

Rank these {kind} from the one that answers the question most directly and correctly to the one that answers it least.
- Explicit, correct answers first; partial, vague or indirect ones after them; {kind} on the topic that do not answer it after those.
- [1] is the reference answer. Put an entry above [1] only if it gives the same answer as [1], perhaps clearer or more complete. One that gives a different answer goes below [1], however sure of itself it sounds.
- {inclusion}
Reply with the ranking only, for example: [2] > [1] > [3]"""
INCLUDE_ALL = "Include every entry exactly once."
INCLUDE_ANSWERING = ("Leave out every passage that contains nothing answering the question or supporting an answer; "
                     "always include [1]; list each entry at most once.")


def extract_request(query: str, documents: list[str], s: ArhnSettings, backend: Backend) -> GenerateRequest:
    docs = "\n\n".join(f"Document {k}:\n{d}" for k, d in enumerate(documents, start=1))
    constraint = None
    if s.constrained == "auto" and "regex" in backend.supports_constraint:
        constraint = Constraint(kind="regex", value=extract_regex(documents, s.copy_sentences))
    return GenerateRequest(
        messages=({"role": "system", "content": EXTRACT_SYSTEM},
                  {"role": "user", "content": EXTRACT_PROMPT.format(query=query, documents=docs, n=len(documents))}),
        max_new_tokens=s.extract_max_new_tokens, temperature=s.temperature, seed=0, constraint=constraint)


def rank_request(query: str, entries: list[str], s: ArhnSettings, backend: Backend) -> GenerateRequest:
    passages = s.rank_on == "passages"
    kind = "passages" if passages else "answer snippets"
    items = "\n".join(f"[{i}] {' '.join(e.split())}" for i, e in enumerate(entries, start=1))
    constraint = None
    if s.constrained == "auto" and "regex" in backend.supports_constraint:
        constraint = Constraint(kind="regex", value=ranking_regex(len(entries), complete=not passages))
    user = RANK_PROMPT.format(query=query, items=items, kind=kind, inclusion=INCLUDE_ANSWERING if passages else INCLUDE_ALL)
    return GenerateRequest(
        messages=({"role": "system", "content": RANK_SYSTEM.format(items=kind)}, {"role": "user", "content": user}),
        max_new_tokens=s.rank_max_new_tokens, temperature=s.temperature, seed=0, constraint=constraint)
