//! `/sbin/modprobe`: the same binary, called by the kernel (its usermode
//! helper, `/proc/sys/kernel/modprobe`) when something needs a module that is
//! not loaded — a VLAN link (`rtnl-link-vlan`), a bond, a crypto algorithm.
//! It resolves the name or alias through `modules.dep`/`modules.alias` like
//! the boot-time loader and loads it with its dependencies.
//!
//! It is an ordinary short-lived process, not PID 1: it may exit.

use std::path::Path;

/// Runs as `modprobe [-q] [-b] [-v] [--] NAME...`; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let mut quiet = false;
    let mut names = Vec::new();
    let mut options_done = false;
    for arg in args {
        match arg.as_str() {
            "--" if !options_done => options_done = true,
            "-q" | "--quiet" if !options_done => quiet = true,
            // Accepted and ignored: blacklist use, verbosity.
            "-b" | "--use-blacklist" | "-v" | "--verbose" if !options_done => {}
            other if other.starts_with('-') && !options_done => {
                eprintln!("modprobe: option {other} is not supported");
                return 1;
            }
            other => names.push(other.to_owned()),
        }
    }
    if names.is_empty() {
        eprintln!("modprobe: name a module or alias");
        return 1;
    }
    let release = crate::stage1::kernel_release();
    let mut db = match crate::modules::Database::load(&Path::new("/lib/modules").join(&release)) {
        Ok(db) => db,
        Err(err) => {
            eprintln!("modprobe: {err}");
            return 1;
        }
    };
    let mut code = 0;
    for name in &names {
        if let Err(why) = load(&mut db, name) {
            if !quiet {
                eprintln!("modprobe: {name}: {why}");
            }
            code = 1;
        }
    }
    code
}

/// Loads the module called `name`, or every module whose alias matches it.
fn load(db: &mut crate::modules::Database, name: &str) -> Result<(), String> {
    if db.knows(name) {
        return db.load_module(name).map(drop).map_err(|e| e.to_string());
    }
    let modules = db.modules_for(name);
    if modules.is_empty() {
        return Err("no module by that name or alias in this image".into());
    }
    for module in modules {
        db.load_module(&module).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::Database;

    #[test]
    fn kernel_requests_resolve_through_aliases() {
        let db = Database::parse(
            "kernel/net/8021q/8021q.ko: kernel/net/802/garp.ko kernel/net/802/mrp.ko\n\
             kernel/net/802/garp.ko:\nkernel/net/802/mrp.ko:\n",
            "alias rtnl-link-vlan 8021q\nalias rtnl-link-bond bonding\n",
        );
        assert!(db.knows("8021q"));
        assert!(!db.knows("rtnl-link-vlan"));
        assert_eq!(
            db.modules_for("rtnl-link-vlan")
                .into_iter()
                .collect::<Vec<_>>(),
            ["8021q"]
        );
    }

    #[test]
    fn unknown_requests_and_options_fail() {
        let mut db = Database::parse("", "");
        assert!(load(&mut db, "rtnl-link-nope").is_err());
        assert_eq!(run(&["--force".to_owned()]), 1);
        assert_eq!(run(&[]), 1);
    }
}
