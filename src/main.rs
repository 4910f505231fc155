//! The `opsrunner` command line: the arguments and the verbs are in `cli/`, the work in the
//! library, the exit codes in `opsrunner::exit`.

#![warn(unreachable_pub)]

mod cli;

fn main() {
    std::process::exit(cli::main());
}
