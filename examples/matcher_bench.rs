//! The policy matcher's cost per request, apart from the rest of the proxy: compiles a
//! policy file and times `Matcher::decide` for a request like the proxy benchmark's
//! (a URL on 127.0.0.1 that no rule matches), in nanoseconds per decision. Item 3 of
//! the proxy benchmark (a 100,000-domain, 100-regex policy) measured on its own:
//!
//!     python3 -c 'import sys; sys.path.insert(0, "bench"); import proxy_bench as p; \
//!         print(p.big_policy(True))' > /tmp/big.yaml
//!     cargo run --release --example matcher_bench -- /tmp/big.yaml [URL]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anyhow::{Context, Result};
use ssq::policy::{self, Matcher, Request};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .context("usage: matcher_bench POLICY.yaml [URL]")?;
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080/1k".to_string());
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    let t = Instant::now();
    let doc = policy::parse(&text)?;
    let valid = policy::validate(&doc, &[])?;
    let matcher = Matcher::compile(&valid, "bench")?;
    println!("compiled {file} in {:.3} s", t.elapsed().as_secs_f64());
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', ':']).next())
        .unwrap_or("127.0.0.1")
        .to_string();
    let req = Request {
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        method: "GET",
        host: &host,
        port: 8080,
        url: &url,
        connect: false,
    };
    let verdict = matcher.decide(&req);
    println!("{url}: {:?} (rule {:?})", verdict.action, verdict.rule);
    // Five runs of a million decisions; the best and the median.
    let mut per = Vec::new();
    for _ in 0..5 {
        let n = 1_000_000u32;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(matcher.decide(std::hint::black_box(&req)));
        }
        per.push(t.elapsed().as_nanos() as f64 / f64::from(n));
    }
    per.sort_by(f64::total_cmp);
    println!(
        "decide: {:.0} ns best, {:.0} ns median (5 runs of 1,000,000)",
        per[0], per[2]
    );
    Ok(())
}
