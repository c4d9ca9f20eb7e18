"""How a KV connector's loads and saves meet the engine's steps (vLLM V1 connector API).

Plain policy: no SimPy. The scheduler asks `loads_in_step` whether an external hit is loaded
inside the step that admits the request; the executor asks the rest to time the step.

Load modes:
  async      the request waits in a loading state while the others step; it is admitted
             once its KV has landed (vLLM >= 0.9: get_num_new_matched_tokens returns
             load_kv_async=True; the worker reports it in get_finished()).
  sync       the step that admits the request loads its KV before the forward pass, one
             request after another, and the whole batch waits, decodes included (vLLM 0.8.5
             + LMCache 0.3: start_load_kv calls a blocking retrieve() per request).
  layerwise  layer i of the forward pass waits for layer i's KV; every layer pays a launch
             and synchronisation cost (LMCache's layer-wise retrieve with
             wait_for_layer_load()).
Save modes:
  async          saves run after the step; the engine does not wait for them.
  sync-step-end  the step returns only when its saves have landed (wait_for_save() at the
                 end of the forward pass in vLLM 0.8.5).
hold_blocks_until_saved: a finished request's blocks stay allocated until its saves land
(request_finished() returning delay_free_blocks=True).
"""

from __future__ import annotations

from dataclasses import dataclass

LOAD_MODES = ("async", "sync", "layerwise")
SAVE_MODES = ("async", "sync-step-end")


@dataclass(frozen=True, slots=True)
class ConnectorSemantics:
    load_mode: str = "async"
    save_mode: str = "async"
    hold_blocks_until_saved: bool = False
    layer_sync_s: float = 0.0  # per layer of a layer-wise load: launch + wait
    layers: int = 1

    def __post_init__(self):
        if self.load_mode not in LOAD_MODES:
            raise ValueError(f"load mode {self.load_mode!r}: expected one of {LOAD_MODES}")
        if self.save_mode not in SAVE_MODES:
            raise ValueError(f"save mode {self.save_mode!r}: expected one of {SAVE_MODES}")
        if self.layers < 1 or self.layer_sync_s < 0:
            raise ValueError("layers must be >= 1 and layer_sync_s >= 0")

    @property
    def loads_in_step(self) -> bool:
        """Is an external hit loaded inside the step that admits its request?"""
        return self.load_mode != "async"

    @property
    def step_waits_for_saves(self) -> bool:
        return self.save_mode == "sync-step-end"

    def layerwise_step_time(self, transfer_s: float, compute_s: float) -> float:
        """Length of a step whose forward pass overlaps a layer-wise load of `transfer_s`.

        Layer i's KV lands at (i+1)/L of the transfer (layers are equal and the load moves
        them in order); layer i computes for compute_s/L once the previous layer is done
        and its KV has landed, after a per-layer cost s. With equal layers the recurrence
        f_i = max(f_{i-1}, a_i) + s + c has the closed form
        f_{L-1} = max(T/L + L(s + c), T + s + c): never earlier than the transfer plus one
        layer, never cheaper than L per-layer costs plus the compute.
        """
        n, s = self.layers, self.layer_sync_s
        c = compute_s / n
        return max(transfer_s / n + n * (s + c), transfer_s + s + c)
