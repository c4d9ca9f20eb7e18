"""What a system's hardware costs: GPU servers plus the parts its KV tier adds.

Prices come from the part cards (NIC, CXL adapter, RoCE and CXL switches: the Beluga paper's
Table 1) and a price card (models/prices/: GPU servers, DRAM, servers per switch), each figure
with its source. Parts a system does not use are not counted: hbm-only and local-dram are the
servers alone (local DRAM is the servers' own); rdma-pool adds the NICs and RoCE switches (its
pool is the servers' DRAM, as in the paper's testbed); cxl-pool adds the adapters, the switch
chips and the box's memory devices.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from belusim.config.scenario import ConfigError, Scenario, SystemConfig
from belusim.paths import models_dir


class PriceCard(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    description: str = ""
    currency: str = "USD"
    gpu_server_usd: float = Field(gt=0)
    dram_usd_per_gb: float = Field(ge=0)
    servers_per_roce_switch: int = Field(gt=0)
    servers_per_cxl_box: int = Field(gt=0)
    sources: dict[str, str]


def load_prices(name: str | Path | None = None) -> PriceCard:
    """A price card by id (models/prices/ID.yaml) or path; None: the default."""
    p = Path(name) if name is not None else models_dir() / "prices" / "default.yaml"
    if name is not None and not p.is_file():
        p = models_dir() / "prices" / f"{name}.yaml"
    try:
        card = PriceCard.model_validate(yaml.safe_load(p.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"price card {str(name)!r} not found (not a file, not in {models_dir() / 'prices'})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    except ValidationError as e:
        msgs = "\n".join(f"  {'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"{p}: invalid price card\n{msgs}") from None
    missing = [k for k in ("gpu_server_usd", "dram_usd_per_gb", "servers_per_roce_switch", "servers_per_cxl_box")
               if k not in card.sources]
    if missing:
        raise ConfigError(f"{p}: sources: no source for {', '.join(missing)}")
    return card


def _part_price(card, what: str) -> float:
    if card.price_usd is None:
        raise ConfigError(f"card {card.id!r} ({what}) has no price_usd: add one with its source to price {what}")
    return card.price_usd


def system_cost(sc: Scenario, system: SystemConfig, prices: PriceCard) -> dict:
    """{"total_usd", "parts": [{"part", "count", "unit_usd", "usd", "source"}]} for one system."""
    cl, hw = sc.cluster, sc.hardware
    parts = [("GPU server", cl.servers, prices.gpu_server_usd, prices.sources["gpu_server_usd"])]
    kind = system.kv.kind
    if kind == "rdma-pool":
        parts.append(("RDMA NIC " + hw.nic.id, cl.servers * cl.nics_per_server, _part_price(hw.nic, "the NIC"),
                      hw.nic.sources.get("price_usd", "")))
        parts.append(("RoCE switch " + hw.network_switch.id, math.ceil(cl.servers / prices.servers_per_roce_switch),
                      _part_price(hw.network_switch, "the RoCE switch"), hw.network_switch.sources.get("price_usd", "")))
    elif kind == "cxl-pool":
        parts.append(("CXL adapter " + hw.cxl_adapter.id, cl.servers * cl.cxl_adapters_per_server,
                      _part_price(hw.cxl_adapter, "the CXL adapter"), hw.cxl_adapter.sources.get("price_usd", "")))
        boxes = math.ceil(cl.servers / prices.servers_per_cxl_box)
        parts.append(("CXL switch " + hw.cxl_switch.id, boxes * cl.cxl_switches,
                      _part_price(hw.cxl_switch, "the CXL switch"), hw.cxl_switch.sources.get("price_usd", "")))
        dev_gb = hw.cxl_memory.capacity_gb
        parts.append((f"CXL memory device {hw.cxl_memory.id} ({dev_gb:g} GB)", boxes * cl.cxl_devices,
                      dev_gb * prices.dram_usd_per_gb, prices.sources["dram_usd_per_gb"]))
    rows = [{"part": p, "count": n, "unit_usd": u, "usd": n * u, "source": s} for p, n, u, s in parts]
    return {"total_usd": sum(r["usd"] for r in rows), "parts": rows}


def break_even(cost: dict[str, float], qps: dict[str, float], baseline: str) -> dict[str, dict]:
    """Per system against `baseline`: the extra hardware it buys, the extra that its QPS gain
    pays for (baseline cost x qps ratio - baseline cost: above it the system costs more per
    QPS), and the QPS ratio at which its extra cost breaks even."""
    out = {}
    cb, qb = cost[baseline], qps.get(baseline) or math.nan
    for name, c in cost.items():
        q = qps.get(name) or math.nan
        ratio = q / qb if qb and math.isfinite(qb) and qb > 0 else math.nan
        pays = cb * ratio - cb if math.isfinite(ratio) else math.nan
        out[name] = {
            "extra_usd": c - cb,
            "qps_ratio": ratio,
            "break_even_qps_ratio": c / cb,
            "extra_paid_for_usd": pays,
            "pays_off": bool(math.isfinite(pays) and c - cb <= pays),
        }
    return out
