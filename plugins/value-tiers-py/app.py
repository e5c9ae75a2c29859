"""value-tiers, ported to Python: the same four return classes, reasons and rule
set as the Rust pack (plugins/value-tiers), built into a component with
componentize-py against contract 0.1.0 (wit/0.1.0). It shows the contract is
language-neutral, and keeps a 0.1.0 component built from source beside the
host's newer contract; the tests check both builds give identical scores.

Build (cargo xtask plugins does this):
    componentize-py -d ../../wit/0.1.0 -w plugin componentize app -o value_tiers_py.wasm
"""
import json
import struct

from wit_world import exports
from componentize_py_types import Err, Ok
from wit_world.imports import types as t

DEFAULT_RULES = json.dumps({
    "high_min_net_cents": 50000,
    "high_min_purchase_days": 3,
    "medium_min_net_cents": 10000,
    "cost_per_order_cents": 500,
    "cost_per_touchpoint_cents": 300,
    "cost_per_complaint_cents": 5000,
})

REASONS = [
    ("spend", "spent {0} over {1} orders", "{1} 笔订单共消费 {0}"),
    ("cost_to_serve", "estimated cost to serve {0}: {1} orders, {2} recent touchpoints, {3} complaints",
     "估计服务成本 {0}：{1} 笔订单、{2} 次近期接触、{3} 次投诉"),
    ("repeat_days", "bought on {0} distinct days", "在 {0} 个不同日期购买"),
    ("complaints", "{0} complaints lower the value", "{0} 次投诉降低了价值"),
    ("band_high", "net value {0} ≥ {1} with {2} purchase days: high return", "净值 {0} ≥ {1}，购买天数 {2}：高回报"),
    ("band_medium", "net value {0} ≥ {1}: medium return", "净值 {0} ≥ {1}：中回报"),
    ("band_low", "net value {0} below {1}: low return", "净值 {0} 低于 {1}：低回报"),
    ("band_negative", "net value {0} is negative: costs more than it brings", "净值 {0} 为负：成本高于收益"),
]


def unpack(buf):
    """Decodes the MessagePack snapshot (docs/SNAPSHOT.md): maps, arrays, strings,
    integers, floats, booleans and nil are all it uses."""
    pos = 0

    def take(n):
        nonlocal pos
        pos += n
        return buf[pos - n:pos]

    def value():
        b = take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return {value(): value() for _ in range(b & 0x0F)}
        if 0x90 <= b <= 0x9F:
            return [value() for _ in range(b & 0x0F)]
        if 0xA0 <= b <= 0xBF:
            return take(b & 0x1F).decode()
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        fixed = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
                 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if b in fixed:
            fmt = fixed[b]
            return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]
        sized = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I", 0xC4: ">B", 0xC5: ">H", 0xC6: ">I",
                 0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I"}
        if b in sized:
            fmt = sized[b]
            n = struct.unpack(fmt, take(struct.calcsize(fmt)))[0]
            if b in (0xD9, 0xDA, 0xDB):
                return take(n).decode()
            if b in (0xC4, 0xC5, 0xC6):
                return bytes(take(n))
            if b in (0xDC, 0xDD):
                return [value() for _ in range(n)]
            return {value(): value() for _ in range(n)}
        raise ValueError(f"unsupported MessagePack byte 0x{b:02x}")

    return value()


def bad(kind, message):
    return Err(kind(message))


class Pack(exports.Pack):
    rules = None

    def describe(self):
        return t.Manifest(
            name="value-tiers-py",
            version="0.1.0",
            description="value-tiers written in Python: high, medium, low and negative-return classes",
            capabilities=t.Capabilities.SCORING | t.Capabilities.SEGMENTATION,
            reads=t.Reads(0),
            stages=[],
            segments=[t.SegmentDef(id=s, label=s.replace("-", " ").capitalize())
                      for s in ["high-return", "medium-return", "low-return", "negative-return"]],
            reasons=[t.ReasonText(code=c, en=en, zh=zh) for c, en, zh in REASONS],
            rules_schema=None,
            default_rules=DEFAULT_RULES,
            wants_fields=[],
        )

    def configure(self, rules):
        try:
            r = json.loads(rules)
        except ValueError as e:
            raise bad(t.PluginError_BadRules, f"the rule set is not valid JSON: {e}")
        need = ["high_min_net_cents", "high_min_purchase_days", "medium_min_net_cents",
                "cost_per_order_cents", "cost_per_touchpoint_cents", "cost_per_complaint_cents"]
        missing = [k for k in need if not isinstance(r.get(k), int)]
        if missing:
            raise bad(t.PluginError_BadRules, f"missing or not a whole number: {', '.join(missing)}")
        if r["high_min_net_cents"] < r["medium_min_net_cents"]:
            raise bad(t.PluginError_BadRules, "high_min_net_cents must be at least medium_min_net_cents")
        if r["medium_min_net_cents"] < 0:
            raise bad(t.PluginError_BadRules, "medium_min_net_cents must not be negative")
        Pack.rules = r

    def evaluate(self, c):
        r = Pack.rules
        m = c.get("metrics", {})
        orders, days = m.get("orders", 0), m.get("purchase_days", 0)
        spend_cents, touch, complaints = m.get("total_spend_cents", 0), m.get("touchpoints_90d", 0), m.get("complaints", 0)
        cost = (orders * r["cost_per_order_cents"] + touch * r["cost_per_touchpoint_cents"]
                + complaints * r["cost_per_complaint_cents"])
        net = spend_cents - cost
        cents = lambda x: x / 100.0
        if net < 0:
            band, why = "negative", t.Reason(code="band_negative", points=0.0, args=[cents(net)])
        elif net >= r["high_min_net_cents"] and days >= r["high_min_purchase_days"]:
            band, why = "high", t.Reason(code="band_high", points=0.0,
                                         args=[cents(net), cents(r["high_min_net_cents"]), float(days)])
        elif net >= r["medium_min_net_cents"]:
            band, why = "medium", t.Reason(code="band_medium", points=0.0,
                                           args=[cents(net), cents(r["medium_min_net_cents"])])
        else:
            band, why = "low", t.Reason(code="band_low", points=0.0,
                                        args=[cents(net), cents(r["medium_min_net_cents"])])
        spend = spend_cents / 100.0
        reasons = [
            t.Reason(code="spend", points=spend, args=[spend, float(orders)]),
            t.Reason(code="cost_to_serve", points=-cost / 100.0,
                     args=[cost / 100.0, float(orders), float(touch), float(complaints)]),
            t.Reason(code="repeat_days", points=0.0, args=[float(days)]),
        ]
        if complaints > 0:
            lost = complaints * r["cost_per_complaint_cents"] / 100.0
            reasons.append(t.Reason(code="complaints", points=-lost, args=[float(complaints)]))
        reasons.append(why)
        return t.CustomerScore(value=net / 100.0, band=band, reasons=reasons), band, why

    def customers(self, batch):
        try:
            return unpack(batch)
        except Exception as e:  # a snapshot this decoder cannot read
            raise bad(t.PluginError_BadInput, f"cannot decode the snapshot: {e}")

    def score(self, ctx, batch):
        out = []
        for c in self.customers(batch):
            if c.get("metrics", {}).get("total_spend_cents", 0) < 0:
                out.append(Err(t.PluginError_BadInput(f"customer {c.get('id')} has negative total spend")))
                continue
            try:
                out.append(Ok(self.evaluate(c)[0]))
            except Exception as e:  # a bug here is this customer's error, not a trap
                out.append(Err(t.PluginError_Failed(f"{type(e).__name__}: {e}")))
        return out

    def segment(self, ctx, batch):
        out = []
        for c in self.customers(batch):
            _, band, why = self.evaluate(c)
            out.append(Ok([t.Membership(segment=f"{band}-return", reason=why)]))
        return out

    def on_event(self, ctx, customer, event):
        return []
