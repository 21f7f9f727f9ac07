//! Prints a generated transaction Bundle as JSON on standard output, and how long generating
//! it took on standard error:
//!
//! ```text
//! cargo run --release -p hygie-synth --example synth_bundle -- --patients 20 --seed 42 > bundle.json
//! cargo run --release -p hygie-synth --example synth_bundle -- --per-patient 3 > bundles.ndjson
//! ```
//!
//! `--per-patient N` prints the first N per-patient bundles instead, one JSON per line.
//! `--repeat N` generates the bundle N times and prints only the fastest time (for timing).

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use hygie_synth::{SynthOptions, hospital_bundle, patient_bundles};

const USAGE: &str = "usage: synth_bundle [--patients N] [--seed N] [--observations-per-encounter N] \
                     [--encounters-per-patient-max N] [--per-patient N] [--repeat N]";

fn main() -> ExitCode {
    let mut options = SynthOptions::default();
    let mut per_patient = None;
    let mut repeat = None;
    let mut arguments = std::env::args().skip(1);
    while let Some(flag) = arguments.next() {
        let Some(value) = arguments.next().and_then(|value| value.parse::<u64>().ok()) else {
            eprintln!("{flag} needs a number\n{USAGE}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--patients" => options.patients = value as usize,
            "--seed" => options.seed = value,
            "--observations-per-encounter" => options.observations_per_encounter = value as usize,
            "--encounters-per-patient-max" => options.encounters_per_patient_max = value as usize,
            "--per-patient" => per_patient = Some(value as usize),
            "--repeat" => repeat = Some(value.max(1)),
            _ => {
                eprintln!("unknown flag {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let check = if per_patient.is_some() {
        options.check()
    } else {
        options.check_hospital_bundle()
    };
    if let Err(error) = check {
        eprintln!("{error}");
        return ExitCode::from(2);
    }
    if let Some(times) = repeat {
        let fastest = (0..times)
            .map(|_| {
                let started = Instant::now();
                let bundle = hospital_bundle(&options);
                let elapsed = started.elapsed();
                drop(bundle);
                elapsed
            })
            .min()
            .unwrap_or_default();
        eprintln!(
            "{} patients: fastest of {times} in {:.2} ms",
            options.patients,
            fastest.as_secs_f64() * 1e3
        );
        return ExitCode::SUCCESS;
    }
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let written = match per_patient {
        None => {
            let bundle = hospital_bundle(&options);
            let elapsed = started.elapsed();
            let entries = bundle["entry"].as_array().map_or(0, Vec::len);
            eprintln!(
                "generated {entries} entries in {:.2} ms",
                elapsed.as_secs_f64() * 1e3
            );
            writeln!(out, "{bundle:#}")
        }
        Some(count) => patient_bundles(&options)
            .take(count)
            .try_for_each(|bundle| writeln!(out, "{bundle}")),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cannot write the bundle: {error}");
            ExitCode::FAILURE
        }
    }
}
