use super::*;

const MIB: u64 = 1 << 20;

fn cfg() -> AdmissionPolicy {
    AdmissionPolicy {
        enabled: true,
        min_samples: 20,
        percentile: 95,
        queue_for: Duration::from_secs(30),
    }
}

fn inputs() -> Inputs {
    Inputs {
        expected: 300 * MIB,
        remaining: 1024 * MIB,
        running: 1,
        host: Some(HostMemory {
            used_percent: 40,
            pressure_at: 85,
            protected: Priority::High,
        }),
        waited_ms: 0,
        queue_for_ms: 30_000,
        clamp_allowed: true,
    }
}

/// 20 peaks of 281..=300 MiB.
fn near_300() -> Vec<u64> {
    (281..=300).map(|m| m * MIB).collect()
}

#[test]
fn percentile_is_nearest_rank() {
    let v: Vec<u64> = (1..=100).rev().collect();
    assert_eq!(percentile(&v, 95), 95);
    assert_eq!(percentile(&v, 50), 50);
    assert_eq!(percentile(&v, 100), 100);
    assert_eq!(percentile(&[7], 95), 7);
    assert_eq!(percentile(&[], 95), 0);
}

#[test]
fn a_declared_size_wins() {
    let e = estimate(&cfg(), Some(64 * MIB), Some(512 * MIB), &near_300(), &[]).unwrap();
    assert_eq!((e.expected, e.source), (64 * MIB, SizeSource::Declared));
}

#[test]
fn the_class_percentile_replaces_the_default_after_min_samples() {
    let peaks = near_300();
    let e = estimate(&cfg(), None, Some(512 * MIB), &peaks, &[]).unwrap();
    // ⌈0.95·20⌉ = 19th of 281..=300: 299 MiB.
    assert_eq!(e.expected, 299 * MIB);
    assert_eq!(e.source, SizeSource::History);
    assert_eq!((e.samples, e.class_peak), (20, Some(299 * MIB)));
    let few = estimate(&cfg(), None, Some(512 * MIB), &peaks[..19], &[]).unwrap();
    assert_eq!((few.expected, few.source), (512 * MIB, SizeSource::Default));
    assert_eq!(estimate(&cfg(), None, None, &peaks[..19], &[]), None);
    let off = AdmissionPolicy {
        enabled: false,
        ..cfg()
    };
    let e = estimate(&off, None, Some(512 * MIB), &peaks, &[]).unwrap();
    assert_eq!(e.source, SizeSource::Default);
    let p50 = AdmissionPolicy {
        percentile: 50,
        ..cfg()
    };
    assert_eq!(
        estimate(&p50, None, None, &peaks, &[]).unwrap().expected,
        290 * MIB
    );
}

#[test]
fn the_session_factor_scales_and_is_bounded() {
    let peaks = near_300();
    // Median of the class: 290 MiB. A session whose calls peak at 145 MiB: 0.5.
    assert_eq!(session_factor(&peaks, &[145 * MIB; 3]), 500);
    assert_eq!(session_factor(&peaks, &[435 * MIB; 3]), 1500);
    assert_eq!(session_factor(&peaks, &[5000 * MIB; 4]), 2000);
    assert_eq!(session_factor(&peaks, &[MIB; 4]), 500);
    // Too few of its own: no factor.
    assert_eq!(session_factor(&peaks, &[145 * MIB; 2]), 1000);
    let e = estimate(&cfg(), None, None, &peaks, &[435 * MIB; 3]).unwrap();
    assert_eq!(e.session_factor_permille, 1500);
    assert_eq!(e.expected, 299 * MIB * 3 / 2);
}

#[test]
fn a_call_that_fits_is_admitted() {
    let d = decide(&inputs());
    assert_eq!((d.verdict, d.granted), (Verdict::Admit, 300 * MIB));
}

#[test]
fn a_short_session_with_running_calls_queues_then_rejects() {
    let short = Inputs {
        remaining: 200 * MIB,
        ..inputs()
    };
    let d = decide(&short);
    assert_eq!(d.verdict, Verdict::Queue);
    assert!(d.reason.contains("has 200 MiB left"), "{}", d.reason);
    assert!(d.reason.contains("up to 30s"), "{}", d.reason);
    let late = decide(&Inputs {
        waited_ms: 30_000,
        ..short
    });
    assert_eq!(late.verdict, Verdict::Reject);
    assert!(
        late.reason.starts_with("waited 30s in the queue: "),
        "{}",
        late.reason
    );
}

#[test]
fn without_queueing_a_short_session_clamps_or_rejects() {
    let short = Inputs {
        remaining: 200 * MIB,
        queue_for_ms: 0,
        ..inputs()
    };
    let d = decide(&short);
    assert_eq!((d.verdict, d.granted), (Verdict::Clamp, 200 * MIB));
    let strict = decide(&Inputs {
        clamp_allowed: false,
        ..short
    });
    assert_eq!(strict.verdict, Verdict::Reject);
    let tiny = decide(&Inputs {
        remaining: 8 * MIB,
        ..short
    });
    assert_eq!(tiny.verdict, Verdict::Reject);
    // Nothing running in the session frees memory: waiting would not help.
    let idle = decide(&Inputs {
        remaining: 200 * MIB,
        running: 0,
        ..inputs()
    });
    assert_eq!(idle.verdict, Verdict::Clamp);
}

#[test]
fn host_memory_above_pressure_at_queues_then_rejects() {
    let full = Inputs {
        host: Some(HostMemory {
            used_percent: 90,
            pressure_at: 85,
            protected: Priority::High,
        }),
        running: 0,
        ..inputs()
    };
    let d = decide(&full);
    assert_eq!(d.verdict, Verdict::Queue);
    assert!(d.reason.contains("host memory at 90%"), "{}", d.reason);
    let late = decide(&Inputs {
        waited_ms: 31_000,
        ..full
    });
    assert_eq!(late.verdict, Verdict::Reject);
    // Never clamped for the host: less memory for this call does not relieve it.
    let no_queue = decide(&Inputs {
        queue_for_ms: 0,
        ..full
    });
    assert_eq!(no_queue.verdict, Verdict::Reject);
    // Admission off: the host does not stop a call.
    let off = decide(&Inputs { host: None, ..full });
    assert_eq!(off.verdict, Verdict::Admit);
}
