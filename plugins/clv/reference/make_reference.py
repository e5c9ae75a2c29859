"""Reference values for the clv pack, from the `lifetimes` library (PyPI) run on
the same CDNOW data with the same parameters. Re-run after changing either:

    pip install lifetimes
    python3 plugins/clv/reference/make_reference.py > plugins/clv/reference/cdnow_reference.csv

Summaries follow the pack: repeat purchases are counted per distinct purchase
day, time in days, evaluated on 1998-07-01; the spend per purchase is the mean
per purchase day (first day included, as the host's metrics give it).
"""
import collections
import datetime
import os
import sys

import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter

# The pack's default rule set: Fader, Hardie & Lee (2005) BG/NBD on CDNOW
# (alpha 4.414 weeks = 30.898 days) and their Gamma-Gamma figures (v in cents).
R, ALPHA, A, B = 0.243, 4.414 * 7, 0.793, 2.426
P, Q, V = 6.25, 3.74, 1544.0
HORIZON = 365

here = os.path.dirname(os.path.abspath(__file__))
data = os.path.join(here, "../../../examples/data/cdnow/CDNOW_master.txt")
now = datetime.date(1998, 7, 1)
days = collections.defaultdict(dict)
for line in open(data):
    cols = line.split()
    if len(cols) != 4 or cols[0] == "customer_id":
        continue
    cid, d, _, dollars = cols
    day = datetime.date(int(d[:4]), int(d[4:6]), int(d[6:8]))
    cents = round(float(dollars) * 100)
    days[cid][day] = days[cid].get(day, 0) + cents

rows = []
for cid in sorted(days)[::10]:
    ds = sorted(days[cid])
    x = len(ds) - 1
    t_x = (ds[-1] - ds[0]).days
    T = (now - ds[0]).days
    m = sum(days[cid].values()) / len(ds)
    rows.append((cid, x, t_x, T, m))
df = pd.DataFrame(rows, columns=["id", "x", "t_x", "T", "m"])

bgf = BetaGeoFitter()
bgf.params_ = pd.Series({"r": R, "alpha": ALPHA, "a": A, "b": B})
ggf = GammaGammaFitter()
ggf.params_ = pd.Series({"p": P, "q": Q, "v": V})
df["p_alive"] = bgf.conditional_probability_alive(df.x, df.t_x, df["T"])
df["expected"] = bgf.conditional_expected_number_of_purchases_up_to_time(HORIZON, df.x, df.t_x, df["T"])
df["spend"] = ggf.conditional_expected_average_profit(df.x, df.m)
df.to_csv(sys.stdout, index=False, float_format="%.10g")
