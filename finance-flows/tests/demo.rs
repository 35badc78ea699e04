//! The demo engine end to end, small: concurrent trades, a buyer crash,
//! the deliberate double spend, and a clean reconciliation.

use finance_flows::demo::{DemoConfig, run_in_process};

#[test]
fn the_in_process_demo_reconciles_after_a_crash() {
    let config = DemoConfig {
        trades: 12,
        seed: 5,
        crash_buyer: true,
        ..DemoConfig::default()
    };
    let mut observed = 0;
    let summary = run_in_process(&config, &mut |_| observed += 1).unwrap();
    assert!(observed > 0, "progress was reported");
    assert_eq!(summary.completed, 12, "{:?}", summary.failures);
    assert_eq!(summary.restarts, 1);
    assert_eq!(summary.rejected_double_spends, 1);
    assert!(summary.problems.is_empty(), "{:?}", summary.problems);
    assert_eq!(summary.buyer.papers.len(), 12);
}
