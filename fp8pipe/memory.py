"""The memory planner's public names in one place (kept so existing imports work).

The work is split by job: `fp8pipe.sizes` (component sizes, activation and decode peaks, the
size parser), `fp8pipe.planner` (the pure planner: candidates, predicted peaks and latency, the
choice and why), `fp8pipe.placement` (applying a plan with diffusers' hooks) and
`fp8pipe.plan_command` (the `plan` command).
"""

from __future__ import annotations

from .placement import *  # noqa: F403
from .placement import HostModule, apply_attention, apply_plan, apply_plan_tiling, choose_attention, keep_on_host  # noqa: F401
from .placement import load_options_for, xformers_usable  # noqa: F401
from .plan_command import add_plan_command, cmd_plan  # noqa: F401
from .planner import *  # noqa: F403
from .planner import Plan, as_eager, free_vram_bytes, host_ram_bytes, next_plan, plan_as_run, plan_ladder, plan_placement  # noqa: F401
from .planner import planner_table, predict, table_markdown  # noqa: F401
from .sizes import *  # noqa: F403
from .sizes import _max_leaf_bytes, _module_bytes  # noqa: F401
