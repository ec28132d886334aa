//! Throwaway TLS material for servers started on loopback.

use std::path::Path;
use std::process::Command;

/// Writes a CA (`ca.crt`, `ca.key`) and a server certificate for 127.0.0.1 signed by it
/// (`server.crt`, `server.key`) into `dir`, valid for two days, with the `openssl` command.
///
/// # Panics
///
/// If `openssl` is missing or fails (its error output is in the message).
pub fn make_test_certs(dir: &Path) {
    let run = |args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    run(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=lease-test-ca"
    ));
    run(&format!(
        "req {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"
    ));
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write ext.cnf");
    run(
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
         -days 2 -extfile ext.cnf",
    );
}
