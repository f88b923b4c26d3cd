//! Learning-rate schedules: their values at chosen steps against PyTorch's
//! closed forms, the command-line form parsed and printed back, and the
//! refusals, each naming what is wrong.

use std::f64::consts::PI;

use hessfree_solvers::{Decay, LrSchedule};

fn parse(s: &str) -> LrSchedule {
    s.parse()
        .unwrap_or_else(|e| panic!("`{s}` should parse: {e}"))
}

fn err(s: &str) -> String {
    match s.parse::<LrSchedule>() {
        Ok(schedule) => panic!("`{s}` should be refused, parsed as {schedule:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_close(got: f64, expected: f64, what: &str) {
    assert!(
        (got - expected).abs() <= 1e-15 * expected.abs(),
        "{what}: {got} vs {expected}"
    );
}

#[test]
fn a_constant_schedule_is_the_base_rate_itself() {
    let c = LrSchedule::default();
    assert_eq!(c, LrSchedule::constant());
    assert!(c.is_constant());
    for step in [0, 1, 17, u64::MAX] {
        assert_eq!(c.lr(0.1, step).to_bits(), 0.1f64.to_bits());
    }
    assert!(!parse("warmup:3,constant").is_constant());
    assert!(!parse("exp:1").is_constant());
}

#[test]
fn decays_take_their_closed_forms_at_chosen_steps() {
    let step = parse("step:3:0.5");
    for (s, expected) in [
        (0, 2.0),
        (2, 2.0),
        (3, 1.0),
        (5, 1.0),
        (6, 0.5),
        (30, 2.0 / 1024.0),
    ] {
        assert_close(step.lr(2.0, s), expected, &format!("step decay at {s}"));
    }

    let exp = parse("exp:0.9");
    for (s, expected) in [(0, 2.0), (1, 1.8), (2, 1.62), (10, 2.0 * 0.9f64.powi(10))] {
        assert!(
            (exp.lr(2.0, s) - expected).abs() <= 1e-14,
            "exponential at {s}: {}",
            exp.lr(2.0, s)
        );
    }

    let cos = parse("cosine:4:0.1");
    let halfway = 0.1 + 0.9 * 0.5 * (1.0 + (PI / 4.0).cos());
    for (s, expected) in [(0, 1.0), (1, halfway), (2, 0.55), (4, 0.1), (1000, 0.1)] {
        assert_close(cos.lr(1.0, s), expected, &format!("cosine at {s}"));
    }
    // Without a floor it anneals to 0 and stays there.
    assert_eq!(parse("cosine:4").lr(1.0, 4), 0.0);
    assert_eq!(parse("cosine:4").lr(1.0, 9), 0.0);
}

#[test]
fn warm_up_ramps_linearly_then_the_decay_starts_from_the_base_rate() {
    let s = parse("warmup:4,cosine:10:0.0");
    let rates: Vec<f64> = (0..5).map(|k| s.lr(0.8, k)).collect();
    assert_eq!(rates, [0.2, 0.4, 0.6000000000000001, 0.8, 0.8]);
    // The cosine counts from the end of the warm-up: at its middle, half.
    assert_close(s.lr(0.8, 4 + 5), 0.4, "cosine middle");
    assert_eq!(s.lr(0.8, 4 + 10), 0.0);

    let s = parse("warmup:2,step:1:0.5");
    let rates: Vec<f64> = (0..5).map(|k| s.lr(1.0, k)).collect();
    assert_eq!(rates, [0.5, 1.0, 1.0, 0.5, 0.25]);
}

#[test]
fn the_command_line_form_prints_back_to_what_parses_to_the_same_bits() {
    let cases = [
        ("constant", "constant"),
        ("step:1000:0.5", "step:1000:0.5"),
        ("exp:0.999", "exp:0.999"),
        ("cosine:5000", "cosine:5000:0"),
        ("cosine:5000:1e-5", "cosine:5000:0.00001"),
        (
            "warmup:500,cosine:5000:1e-5",
            "warmup:500,cosine:5000:0.00001",
        ),
        ("warmup:7,constant", "warmup:7,constant"),
        ("warmup:0,exp:0.5", "exp:0.5"),
    ];
    for (input, printed) in cases {
        let schedule = parse(input);
        assert_eq!(schedule.to_string(), printed, "{input}");
        assert_eq!(parse(printed), schedule, "{printed}");
    }
    assert_eq!(
        parse("step:1000:0.5"),
        LrSchedule {
            decay: Decay::Step {
                every: 1000,
                factor: 0.5
            },
            warmup_steps: 0,
        }
    );
    assert_eq!(
        parse("warmup:500,cosine:5000:1e-5"),
        LrSchedule {
            decay: Decay::Cosine {
                steps: 5000,
                floor: 1e-5
            },
            warmup_steps: 500,
        }
    );
    // Rates with long expansions survive the round trip exactly.
    let gamma = 1.0 - 1.0 / 3.0;
    let s = LrSchedule {
        decay: Decay::Exponential { gamma },
        warmup_steps: 0,
    };
    match parse(&s.to_string()).decay {
        Decay::Exponential { gamma: back } => assert_eq!(back.to_bits(), gamma.to_bits()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unknown_form_is_refused_listing_the_valid_ones() {
    for bad in [
        "",
        "linear",
        "cos:100",
        "step:10",
        "step:10:0.5:1",
        "step:ten:0.5",
        "step:-1:0.5",
        "exp",
        "exp:fast",
        "cosine:1e3",
        "cosine:100:0.1:2",
        "warmup:5",
        "warmup:x,constant",
        "warmup:5,warmup:5,constant",
        "Constant",
    ] {
        let msg = err(bad);
        assert!(
            msg.contains(&format!("unknown learning-rate schedule `{bad}`")),
            "{bad}: {msg}"
        );
        for form in [
            "constant",
            "step:EVERY:FACTOR",
            "exp:GAMMA",
            "cosine:STEPS[:FLOOR]",
            "warmup:STEPS,",
        ] {
            assert!(msg.contains(form), "{bad}: {msg} lacks {form}");
        }
    }
}

#[test]
fn out_of_range_values_are_refused_saying_why() {
    for (bad, why) in [
        ("step:0:0.5", "step decay needs a period of at least 1 step"),
        (
            "step:10:0",
            "the step-decay factor must be in (0, 1], got 0",
        ),
        (
            "step:10:1.5",
            "the step-decay factor must be in (0, 1], got 1.5",
        ),
        (
            "step:10:NaN",
            "the step-decay factor must be in (0, 1], got NaN",
        ),
        (
            "exp:0",
            "the exponential decay rate must be in (0, 1], got 0",
        ),
        (
            "exp:-0.5",
            "the exponential decay rate must be in (0, 1], got -0.5",
        ),
        (
            "exp:inf",
            "the exponential decay rate must be in (0, 1], got inf",
        ),
        ("cosine:0", "cosine annealing needs at least 1 step"),
        (
            "cosine:10:-1e-5",
            "the cosine floor must be finite and >= 0, got -0.00001",
        ),
        (
            "cosine:10:nan",
            "the cosine floor must be finite and >= 0, got NaN",
        ),
    ] {
        let msg = err(bad);
        assert_eq!(
            msg,
            format!("invalid setting: learning-rate schedule `{bad}`: {why}")
        );
    }

    // The floor is a rate: above the one it anneals from, it is refused.
    let s = parse("cosine:10:0.01");
    assert!(s.validate("SGD", 0.01).is_ok());
    let msg = s
        .validate("Adam", 0.001)
        .expect_err("floor above")
        .to_string();
    assert!(
        msg.contains("Adam learning-rate schedule `cosine:10:0.01`")
            && msg.contains("the cosine floor 0.01 is above the learning rate 0.001"),
        "{msg}"
    );
    // A schedule built in code is checked like a parsed one.
    let built = LrSchedule {
        decay: Decay::Exponential { gamma: f64::NAN },
        warmup_steps: 0,
    };
    let msg = built
        .validate("SGD", 0.1)
        .expect_err("NaN gamma")
        .to_string();
    assert!(
        msg.contains("the exponential decay rate must be in (0, 1], got NaN"),
        "{msg}"
    );
}

#[test]
fn schedules_serialise_tagged_by_kind_and_come_back() {
    for (s, json) in [
        ("constant", r#"{"kind":"constant"}"#),
        ("step:3:0.5", r#"{"kind":"step","every":3,"factor":0.5}"#),
        ("exp:0.99", r#"{"kind":"exponential","gamma":0.99}"#),
        (
            "warmup:5,cosine:100:1e-5",
            r#"{"kind":"cosine","steps":100,"floor":0.00001,"warmup_steps":5}"#,
        ),
    ] {
        let schedule = parse(s);
        assert_eq!(serde_json::to_string(&schedule).unwrap(), json, "{s}");
        assert_eq!(
            serde_json::from_str::<LrSchedule>(json).unwrap(),
            schedule,
            "{json}"
        );
    }
}
