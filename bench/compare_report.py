#!/usr/bin/env python3
"""Writes bench/compare's section of BENCHMARKS.md from one run's results.

    compare_report.py RESULTS.jsonl PGBENCH.jsonl SECONDS BENCHMARKS.md

Only the text between BEGIN and END below is replaced; everything else in the file (the
hand-written sections) is kept as it is. A file without the markers gets the section
right after its first line (the title), and keeps the rest.
"""
import datetime
import json
import platform
import subprocess
import sys

BEGIN = "<!-- bench/compare: generated section begins (edit outside it: the script replaces it) -->"
END = "<!-- bench/compare: generated section ends -->"

results, pgbench_file, dur, md_path = sys.argv[1:5]
rows = [json.loads(l) for l in open(results) if l.strip()]
pgb = [json.loads(l) for l in open(pgbench_file) if l.strip()]


def find(s, label=""):
    return next((r for r in rows if r["scenario"] == s and r.get("label", "") == label), None)


def pg(script, streams):
    return next(r for r in pgb if r["script"] == script and r["streams"] == streams)


def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return "?"


def f(x, d=0):
    return f"{x:,.{d}f}"


def ok(b):
    return "met" if b else "**missed**"


def us(r, who, unit):
    return r.get(f"{who}_cpu_us_per_{unit}", float("nan"))


def coarse(r):
    """A warning when the window held under 50 clock ticks of server CPU (see caveats)."""
    ticks = round(r.get("server_cpu_s", 0) * 100)
    return f" — {ticks} ticks of server CPU: indicative only" if ticks < 50 else ""


cpu = sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor()
mem = sh("free -g | awk '/Mem:/ {print $2}'")
pgv = sh("psql --version | awk '{print $3}'")
post, hot = find("post"), find("hot")
post0, hot0 = find("post", "group commit off"), find("hot", "group commit off")
fan, sat, cat = find("fanout"), find("fanout", "saturation"), find("catchup")
idle, idle10 = find("idle"), find("idle", "10,000")
pg_many, pg_one = pg("append1", 1000), pg("append1", 1)
pg4_many, pg4_one = pg("append4", 1000), pg("append4", 1)

out = []
p = out.append
p(f"Written by `bench/compare` on {datetime.date.today()}: {sh('nproc')} cores ({cpu}), {mem} GiB RAM, "
  f"PostgreSQL {pgv} (fsync on), secretd release build with the Postgres store, load generator "
  f"(`secretd-bench`) and pgbench on the same machine. Runs of {dur} s. These machines are noisy: "
  "compare ratios and CPU per operation, which are measured in the same run, rather than absolute "
  "rates.\n")
p("## Targets\n")
p("| scenario | secretd | ceiling / target | ratio | target |")
p("|---|---|---|---|---|")
p(f"| `post` 64 posters, 1,000 streams, 512 B | {f(post['posts_per_sec'])} posts/s | pgbench {f(pg_many['tps'])} tx/s (one statement) | {post['posts_per_sec']/pg_many['tps']:.2f}× | ≥ 1.0× — {ok(post['posts_per_sec'] >= pg_many['tps'])} |")
p(f"| | | pgbench {f(pg4_many['tps'])} tx/s (BEGIN; UPDATE; INSERT; COMMIT) | {post['posts_per_sec']/pg4_many['tps']:.2f}× | |")
p(f"| `hot` 64 posters, 1 stream | {f(hot['posts_per_sec'])} acked posts/s | pgbench {f(pg_one['tps'])} tx/s (one statement) | {hot['posts_per_sec']/pg_one['tps']:.2f}× | ≥ 3.0× — {ok(hot['posts_per_sec'] >= 3*pg_one['tps'])} |")
p(f"| | | pgbench {f(pg4_one['tps'])} tx/s (BEGIN; UPDATE; INSERT; COMMIT) | {hot['posts_per_sec']/pg4_one['tps']:.2f}× | |")
p(f"| `fanout` 1,000 subscribers, 100 posts/s | p99 {fan['p99_ms']} ms post→receive | 10 ms | | {ok(fan['p99_ms'] <= 10 and fan['complete'])} |")
p(f"| `fanout` 1,000 subscribers, saturation | {f(sat['deliveries_per_sec'])} deliveries/s | 200,000/s | {sat['deliveries_per_sec']/200000:.2f}× | {ok(sat['deliveries_per_sec'] >= 200000 and sat['complete'])} |")
p(f"| `idle` {f(idle['subscriptions'])} subscriptions | {idle['rss_per_sub_kib']} KiB RSS each | 16 KiB | | {ok(idle['rss_per_sub_kib'] <= 16)} |")
p(f"| `catchup` {f(cat['backlog'])} events from 0 | {f(cat['events_per_sec'])} events/s | 100,000/s | {cat['events_per_sec']/100000:.2f}× | {ok(cat['events_per_sec'] >= 100000 and cat['complete'])} |")

p("\n## CPU per operation (DESIGN §14, issue 23)\n")
p("CPU time over each scenario's measured window, from `/proc` (see *How CPU per operation is "
  "measured* below): the server process, and Postgres (the postmaster, its live children and "
  "what its exited children left). pgbench's Postgres CPU is measured the same way around each "
  "pgbench run.\n")
p("| figure | secretd: server + Postgres | reference | ratio | target (issue 23) |")
p("|---|---|---|---|---|")
for name, r, ref in [("`post` 64 posters, 1,000 streams, 512 B", post, pg_many),
                     ("`hot` 64 posters, 1 stream", hot, pg_one)]:
    s, q = us(r, "server", "post"), us(r, "postgres", "post")
    ratio = (s + q) / ref["postgres_cpu_us_per_txn"]
    goal = f"≤ 0.5× — {ok(ratio <= 0.5)}" if r is post else ""
    p(f"| CPU per acknowledged post, {name} | {s:.1f} + {q:.1f} = **{s + q:.1f} µs**{coarse(r)} | Postgres "
      f"{ref['postgres_cpu_us_per_txn']:.1f} µs per single-row pgbench transaction (one statement, "
      f"{f(ref['streams'])} stream{'s' if ref['streams'] > 1 else ''}) | **{ratio:.2f}×** | {goal} |")
p(f"| | | Postgres {pg4_many['postgres_cpu_us_per_txn']:.1f} µs per pgbench BEGIN/UPDATE/INSERT/COMMIT "
  f"(1,000 streams) | {(us(post, 'server', 'post') + us(post, 'postgres', 'post')) / pg4_many['postgres_cpu_us_per_txn']:.2f}× | |")
p(f"| server CPU per delivery, `fanout` 1,000 subscribers, saturation | **{us(sat, 'server', 'delivery'):.2f} µs** "
  f"(Postgres {us(sat, 'postgres', 'delivery'):.2f}){coarse(sat)} | | | ≤ 3 µs — {ok(us(sat, 'server', 'delivery') <= 3)} |")
p(f"| server CPU per delivery, `fanout` 1,000 subscribers, 100 posts/s | {us(fan, 'server', 'delivery'):.2f} µs "
  f"(Postgres {us(fan, 'postgres', 'delivery'):.2f}){coarse(fan)} | | | |")
p(f"| resident memory per idle subscription, {f(idle['subscriptions'])} | **{idle['rss_per_sub_kib']} KiB** "
  f"({f(idle['calls'])} calls of 10; opening cost {us(idle, 'server', 'subscription'):.1f} µs of server CPU each) | | | ≤ 2 KiB — {ok(idle['rss_per_sub_kib'] <= 2)} |")
if idle10:
    p(f"| resident memory per idle subscription, {f(idle10['subscriptions'])} | {idle10['rss_per_sub_kib']} KiB | | | |")
p(f"| CPU per event resumed, `catchup` | {us(cat, 'server', 'event'):.2f} + {us(cat, 'postgres', 'event'):.2f} µs{coarse(cat)} | | | |")

p("\n## Group commit: before and after (same run)\n")
p("\"Off\" is one transaction per post with 64 concurrent writers (`commit_max_batch = 1`, "
  "`commit_writers = 64`); \"on\" is the default (posts queued while a transaction runs share the next one).\n")
p("| scenario | off: posts/s | on: posts/s | on/off | off p99 ms | on p99 ms | off: CPU µs/post (server + Postgres) | on: CPU µs/post |")
p("|---|---|---|---|---|---|---|---|")
for name, a, b in [("post", post0, post), ("hot", hot0, hot)]:
    ca = us(a, "server", "post") + us(a, "postgres", "post")
    cb = us(b, "server", "post") + us(b, "postgres", "post")
    p(f"| `{name}` | {f(a['posts_per_sec'])} | {f(b['posts_per_sec'])} | {b['posts_per_sec']/a['posts_per_sec']:.2f}× | {a['p99_ms']} | {b['p99_ms']} | {ca:.1f} | {cb:.1f} |")
p(f"\nIn `hot`, 64 posters share one counter as clients would; a post whose counter was overtaken is "
  f"refused and retried with a fresh one (refused: off {f(hot0['rejected'])}, on {f(hot['rejected'])}).\n")
p("## All figures\n")
p("| scenario | label | figures |")
p("|---|---|---|")
for r in rows:
    rest = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("scenario", "label"))
    p(f"| {r['scenario']} | {r.get('label', '')} | {rest} |")
for r in pgb:
    what = "one statement (`WITH u AS (UPDATE … RETURNING) INSERT …`)" if r["script"] == "append1" \
        else "BEGIN/UPDATE/INSERT/COMMIT"
    p(f"| pgbench | {f(r['streams'])} stream{'s' if r['streams'] > 1 else ''}, 64 clients | {what}: "
      f"{f(r['tps'])} tx/s, transactions {r['transactions']}, postgres_cpu_s {r['postgres_cpu_s']}, "
      f"postgres_cpu_us_per_txn {r['postgres_cpu_us_per_txn']} |")
section = "\n".join(out).rstrip() + "\n"

try:
    text = open(md_path).read()
except FileNotFoundError:
    text = "# Benchmarks\n"
if BEGIN in text and END in text:
    before = text[:text.index(BEGIN)]
    after = text[text.index(END) + len(END):]
else:
    first, _, rest = text.partition("\n")
    before, after = first + "\n\n", "\n\n" + rest.lstrip("\n")
with open(md_path, "w") as fh:
    fh.write(before + BEGIN + "\n" + section + END + after)
