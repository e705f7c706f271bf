"""RLHN's ``--dry-run``: every stage-1 prompt as it will be sent (windows of the judged rows),
one of them printed; stage 2 as the recipe's expected share of stage-1 flags
(``dry_run.stage2_share``)."""

from __future__ import annotations

from builders.judges.dry_counts import check_limit, prompt_counter
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.ledger import StagePlan
from builders.methods.rlhn.stage import RlhnSettings, prompt_version, render_messages, variant_of, windows_of
from builders.rows import QueryRow


def plans(rows: list[QueryRow], s: RlhnSettings, specs: dict[str, list[EndpointSpec]], dry, result: dict, out) -> list[StagePlan]:
    """RLHN's prompts per stage -> one ``StagePlan`` per stage; prints one rendered prompt."""
    windows = [w for r in rows if s.judges_row(r) for w in windows_of(r, s)]
    result["prompts_stage1"] = len(windows)
    if windows:
        example = render_messages(windows[0], s)
        print(f"\n--- rendered prompt ({prompt_version(variant_of(windows[0].row, s))}), {len(windows[0].negatives)} negatives ---", file=out)
        for m in example:
            print(f"[{m['role']}]\n{m['content']}", file=out)
        print("--- end of prompt ---\n", file=out)
    out_plans = []
    for name in ("stage1", "stage2"):
        if name not in specs:
            continue
        spec = specs[name][0]  # a fleet's members serve one model
        share = 1.0 if name == "stage1" else dry.stage2_share
        how, count = prompt_counter(dry, spec)
        check = check_limit(specs[name], [count(render_messages(w, s)) for w in windows], s.max_new_tokens)
        out_plans.append(StagePlan(f"rlhn/{name}", spec.model_id, check.sent, share, dry.completion_tokens))
        est, calls = int(sum(check.sent) * share), int(len(windows) * share)
        print(f"{name} [{spec.model_id}]: ~{calls} prompts, ~{est:,} prompt tokens ({how}){'' if name == 'stage1' else f', stage-2 share {share}'}", file=out)
        print(check.line(), file=out)
        result["stages"][name] = {"judge": spec.model_id, "prompts": calls, "prompt_tokens": est, "counted_with": how,
                                  **check.as_dict()}
    return out_plans
