//! Runs the deterministic network simulator (kogge::sim) over a range of seeds, or one
//! seed to reproduce a failure.
//!
//! ```text
//! cargo run --release --example sim -- --seed 17             # one seed, full report
//! cargo run --release --example sim -- --seeds 0..2000       # many seeds (CI's sweep)
//! cargo run --release --example sim -- --seed 3 --attack drop
//! cargo run --release --example sim -- --soak 1000000        # the long soak
//! ```
//! Exits 1 if any run broke an invariant, printing the seed and what broke.

use std::process::ExitCode;
use std::time::Instant;

use kogge::sim::{Attack, Sim, SimConfig, SimReport};
use rand_chacha::ChaCha20Rng;

fn parse_attack(s: &str) -> Option<Attack> {
    Some(match s {
        "replay" => Attack::Replay,
        "drop" => Attack::Drop,
        "reorder" => Attack::Reorder,
        "forge-sender" => Attack::ForgeSender,
        "swap-bundles" => Attack::SwapBundles,
        "swap-identity" => Attack::SwapIdentity,
        "add-device" => Attack::AddDevice,
        _ => return None,
    })
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: sim [--seed N | --seeds A..B | --soak MESSAGES] [--attack NAME] [--threads N]\n\
         attacks: replay drop reorder forge-sender swap-bundles swap-identity add-device"
    );
    ExitCode::from(2)
}

#[allow(clippy::disallowed_methods)] // wall-clock timing of the run itself
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = 0..200u64;
    let mut soak: Option<usize> = None;
    let mut attack = None;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut verbose = false;
    let mut trace = false;
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seed" => {
                let Ok(s) = value.parse() else { return usage() };
                seeds = s..s + 1;
                verbose = true;
            }
            "--seeds" => {
                let Some((a, b)) = value.split_once("..") else {
                    return usage();
                };
                let (Ok(a), Ok(b)) = (a.parse(), b.parse()) else {
                    return usage();
                };
                seeds = a..b;
            }
            "--soak" => {
                let Ok(n) = value.parse() else { return usage() };
                soak = Some(n);
            }
            "--attack" => {
                let Some(a) = parse_attack(&value) else {
                    return usage();
                };
                attack = Some(a);
            }
            "--trace" => {
                trace = true;
                i += 1;
                continue;
            }
            "--threads" => {
                let Ok(n) = value.parse() else { return usage() };
                threads = n;
            }
            _ => return usage(),
        }
        i += 2;
    }
    let started = Instant::now();
    if let Some(messages) = soak {
        let seed = seeds.start;
        let mut config = SimConfig::soak(seed, messages);
        config.attack = attack;
        let report = Sim::<ChaCha20Rng>::new(config).run();
        let secs = started.elapsed().as_secs_f64();
        println!("{report}");
        println!(
            "soak: {} messages, {} deliveries to devices in {:.1} s wall ({:.0} deliveries/s), \
             {:.1} h virtual",
            report.sent,
            report.deliveries,
            secs,
            report.deliveries as f64 / secs,
            report.virtual_ms as f64 / 3.6e6
        );
        return if report.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let all: Vec<u64> = seeds.clone().collect();
    let chunk = all.len().div_ceil(threads.max(1)).max(1);
    let failures: Vec<SimReport> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&seed| {
                            let mut config = SimConfig::faulty(seed);
                            config.attack = attack;
                            config.trace = trace;
                            Sim::<ChaCha20Rng>::new(config).run()
                        })
                        .filter(|r| verbose || !r.violations.is_empty())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for r in &failures {
        println!("{r}");
    }
    let failed = failures.iter().filter(|r| !r.violations.is_empty()).count();
    println!(
        "{} seeds ({}..{}), {} failed, {:.1} s",
        all.len(),
        seeds.start,
        seeds.end,
        failed,
        started.elapsed().as_secs_f64()
    );
    for r in failures.iter().filter(|r| !r.violations.is_empty()) {
        println!(
            "reproduce: cargo run --release --example sim -- --seed {}{}",
            r.seed,
            attack.map_or(String::new(), |a| format!(" --attack {a:?}"))
        );
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
