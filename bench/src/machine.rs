//! What the numbers were measured on: the report's "Machine" list and the
//! `/proc` and command helpers behind it. Nothing here fails: a missing
//! value reads as `unknown` or empty.

/// The value after `key:` in a `/proc` file such as `/proc/meminfo`.
pub fn read_proc(path: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    })
}

/// Trimmed stdout of a command, empty if it cannot run.
pub fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A Markdown list: cores, CPU model, memory, kernel, rustc.
pub fn machine_info() -> String {
    let nproc = command_output("nproc", &[]);
    let model = read_proc("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let mem = read_proc("/proc/meminfo", "MemTotal").unwrap_or_else(|| "unknown".into());
    let kernel = command_output("uname", &["-sr"]);
    let rustc = command_output("rustc", &["--version"]);
    format!(
        "- nproc: {nproc}\n- CPU: {model}\n- memory: {mem}\n- kernel: {kernel}\n- {rustc}, release profile\n"
    )
}
