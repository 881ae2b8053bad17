#![allow(clippy::unwrap_used)]
//! Workloads and registries: every field parses and survives a round trip,
//! sizes and CPU amounts convert, registry credentials are secrets.

use bramble_config::{MachineConfig, RestartPolicy, parse_cpu, parse_memory};

const FULL: &str = include_str!("data/full.yaml");

fn with_runtime() -> String {
    let extra = r#"  registries:
    mirrors:
      docker.io: ["http://10.0.2.100:5000", "https://mirror.example.org"]
    insecure: ["10.0.2.100:5000"]
    auth:
      ghcr.io:
        username: robot
        password: s3cret-password
      registry.example.org:
        token: bearer-token-value
  workloads:
    - name: web
      image: docker.io/library/busybox:1.36
      command: [/bin/httpd]
      args: [-f, -p, "8080"]
      env:
        A: b
      workingDir: /srv
      user: "1000:1000"
      mounts:
        - source: /var/lib/web
          destination: /srv
          readOnly: true
      resources:
        memory: 64Mi
        cpu: 500m
        pids: 64
      restart: on-failure
      readOnlyRootfs: true
      capabilities: [NET_BIND_SERVICE, CAP_NET_RAW]
      stopGracePeriodSeconds: 3
      ports:
        - containerPort: 8080
        - containerPort: 80
          hostPort: 8081
"#;
    // `extra` ends inside the workloads list: the file's own workload follows.
    FULL.replacen("  workloads:\n", extra, 1)
}

#[test]
fn every_workload_field_round_trips() {
    let text = with_runtime();
    let config = MachineConfig::parse(&text).unwrap();
    let w = &config.machine.workloads[0];
    assert_eq!(w.name, "web");
    assert_eq!(w.restart, RestartPolicy::OnFailure);
    assert_eq!(w.resources.memory_bytes(), Some(64 << 20));
    assert_eq!(w.resources.cpu_millis(), Some(500));
    assert_eq!(w.stop_grace_period(), 3);
    assert!(w.mounts[0].read_only && w.read_only_rootfs);
    assert!(!w.host_network, "a network namespace of its own by default");
    let published: Vec<(u16, u16)> = w
        .ports
        .iter()
        .map(|p| (p.container_port, p.host()))
        .collect();
    assert_eq!(published, [(8080, 8080), (80, 8081)]);
    assert_eq!(config.machine.workloads[1].name, "metrics");
    assert_eq!(
        config.machine.workloads[1].restart,
        RestartPolicy::Always,
        "the default policy"
    );
    assert_eq!(config.machine.workloads[1].stop_grace_period(), 10);
    let again = MachineConfig::parse(&config.to_yaml()).unwrap();
    assert_eq!(again, config);
}

#[test]
fn registry_credentials_are_secrets() {
    let config = MachineConfig::parse(&with_runtime()).unwrap();
    let shown = config.redacted().to_yaml();
    assert!(!shown.contains("s3cret-password"), "{shown}");
    assert!(!shown.contains("bearer-token-value"), "{shown}");
    assert!(shown.contains("username: robot"));
    assert!(!format!("{config:?}").contains("s3cret-password"));
}

#[test]
fn sizes_and_cpu_amounts() {
    assert_eq!(parse_memory("1024"), Ok(1024));
    assert_eq!(parse_memory("4Ki"), Ok(4096));
    assert_eq!(parse_memory("2Gi"), Ok(2 << 30));
    assert!(parse_memory("64MB").unwrap_err().contains("unknown unit"));
    assert!(parse_memory("0").is_err());
    assert!(
        parse_memory("99999999999999Gi")
            .unwrap_err()
            .contains("out of range")
    );
    assert_eq!(parse_cpu("500m"), Ok(500));
    assert_eq!(parse_cpu("1.5"), Ok(1500));
    assert_eq!(parse_cpu("2"), Ok(2000));
    assert_eq!(parse_cpu("0.001"), Ok(1));
    assert!(parse_cpu("0").is_err());
    assert!(parse_cpu("1.2345").is_err());
    assert!(parse_cpu("-1").is_err());
}
