//! Writes every fuzz target's seeds to `DIR/<target>/` for a coverage-guided
//! engine to start from, or with `--list` prints the targets' names.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(argument) = std::env::args().nth(1) else {
        eprintln!("usage: fuzz-seeds DIR | --list");
        return ExitCode::from(2);
    };
    if argument == "--list" {
        for target in synod_fuzz::TARGETS {
            println!("{}", target.name);
        }
        return ExitCode::SUCCESS;
    }
    for target in synod_fuzz::TARGETS {
        let directory = PathBuf::from(&argument).join(target.name);
        let written = std::fs::create_dir_all(&directory).and_then(|()| {
            (target.seeds)()
                .iter()
                .enumerate()
                .try_for_each(|(index, seed)| std::fs::write(directory.join(format!("seed-{index:03}")), seed))
        });
        if let Err(error) = written {
            eprintln!("fuzz-seeds: writing {}: {error}", directory.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
