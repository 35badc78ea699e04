//! Runs one flow body both ways and compares: the `#[flow]` state machine
//! (under [`FlowDriver`], with and without a checkpoint round trip at every
//! suspension) against its plain `async fn` twin (under
//! [`run_plain`](crate::plain::run_plain)).

use crate::plain::{self, PlainFlow};
use crate::trace::{Counterparty, Input, Outcome, Script, Trace, TraceBuilder};
use flow_runtime::testing::FlowDriver;
use flow_runtime::{Event, Flow};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::fmt::Debug;

/// Runs the generated state machine `flow` against `counterparty`. With
/// `round_trip`, the state is serialized and deserialized (rmp-serde) at
/// every suspension, as a durable node does.
pub fn run_generated<F: Flow>(
    flow: F,
    counterparty: &mut dyn Counterparty,
    round_trip: bool,
) -> Trace<F::Output> {
    let mut driver = FlowDriver::new(flow).checkpoint_every_step(round_trip);
    let mut names = TraceBuilder::default();
    let mut steps = Vec::new();
    let mut next = driver.start().cloned();
    loop {
        let report = match next {
            Ok(report) => report,
            Err(e) => {
                return Trace {
                    steps,
                    outcome: Outcome::Broken(e.to_string()),
                };
            }
        };
        let mut step = crate::trace::StepTrace::default();
        for o in &report.opened {
            step.opened
                .push(names.opened(o.id, &o.counterparty, o.initiating_flow));
        }
        for m in report.sends {
            step.sends.push(names.sent(m.session, m.payload));
        }
        step.wait = report.wait.as_ref().map(|w| names.wait(w));
        steps.push(step);
        if report.finished {
            let outcome = match driver.into_result() {
                Some(result) => Outcome::Done(result),
                None => Outcome::Broken("finished without a result".to_owned()),
            };
            return Trace { steps, outcome };
        }
        let Some(wait) = report.wait else {
            return Trace {
                steps,
                outcome: Outcome::SuspendedWithoutWait,
            };
        };
        let Some(event) = counterparty.answer(&wait) else {
            return Trace {
                steps,
                outcome: Outcome::Waiting,
            };
        };
        next = match event {
            Event::Message { session, payload } => driver.deliver_payload(session, payload),
            Event::SessionEnded { session, error } => driver.end_session(session, error),
            Event::Timer => driver.fire_timer(),
            Event::Start => driver.start(),
        }
        .cloned();
    }
}

/// Runs both twins against `inputs` and fails with both traces if they
/// differ in any send, wait or outcome — directly or with a checkpoint
/// round trip at every suspension.
pub fn compare<F>(
    generated: &dyn Fn() -> F,
    plain: &dyn Fn(&mut plain::FlowContext) -> PlainFlow<F::Output>,
    inputs: &[Input],
) -> Result<Trace<F::Output>, TestCaseError>
where
    F: Flow,
    F::Output: PartialEq + Debug,
{
    let reference = plain::run_plain(plain, &mut Script::new(inputs));
    let direct = run_generated(generated(), &mut Script::new(inputs), false);
    if direct != reference {
        return Err(TestCaseError::fail(format!(
            "the #[flow] machine and the plain async fn disagree\n\
             inputs: {inputs:?}\n#[flow]: {direct:#?}\nplain:  {reference:#?}"
        )));
    }
    let durable = run_generated(generated(), &mut Script::new(inputs), true);
    if durable != reference {
        return Err(TestCaseError::fail(format!(
            "the #[flow] machine behaves differently when its state is checkpointed \
             (rmp-serde round trip) at every suspension\n\
             inputs: {inputs:?}\nwith checkpoints: {durable:#?}\nplain: {reference:#?}"
        )));
    }
    Ok(reference)
}

/// Property test: for counterparty inputs drawn by proptest (up to
/// `max_inputs` answers), the two twins of flow `name` behave the same.
/// The number of cases is proptest's (`PROPTEST_CASES`, default 256).
/// Returns the outcomes seen, so a caller can check the property was not
/// vacuous (e.g. that some runs succeeded).
pub fn check_flow<F>(
    name: &str,
    max_inputs: usize,
    generated: &dyn Fn() -> F,
    plain: &dyn Fn(&mut plain::FlowContext) -> PlainFlow<F::Output>,
) -> Result<Coverage, String>
where
    F: Flow,
    F::Output: PartialEq + Debug,
{
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    check_flow_with(config, name, max_inputs, generated, plain)
}

/// [`check_flow`] with an explicit proptest configuration (e.g. fewer cases
/// for each of the hundreds of generated bodies).
pub fn check_flow_with<F>(
    config: Config,
    name: &str,
    max_inputs: usize,
    generated: &dyn Fn() -> F,
    plain: &dyn Fn(&mut plain::FlowContext) -> PlainFlow<F::Output>,
) -> Result<Coverage, String>
where
    F: Flow,
    F::Output: PartialEq + Debug,
{
    let mut runner = TestRunner::new(config);
    let coverage = std::cell::RefCell::new(Coverage::default());
    let result = runner.run(&crate::trace::inputs(max_inputs), |inputs| {
        let trace = compare(generated, plain, &inputs)?;
        coverage.borrow_mut().record(&trace);
        Ok(())
    });
    match result {
        Ok(()) => Ok(coverage.into_inner()),
        Err(TestError::Fail(reason, inputs)) => Err(format!(
            "flow `{name}` failed the differential test.\nminimal inputs: {inputs:?}\n{reason}"
        )),
        Err(TestError::Abort(reason)) => Err(format!("flow `{name}`: proptest aborted: {reason}")),
    }
}

/// How the runs of a property test ended, to show it exercised something.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Runs that returned `Ok`.
    pub ok: usize,
    /// Runs that returned an error.
    pub err: usize,
    /// Runs left waiting for input.
    pub waiting: usize,
    /// The largest number of steps (suspensions + 1) in one run.
    pub max_steps: usize,
}

impl Coverage {
    fn record<O>(&mut self, trace: &Trace<O>) {
        match trace.outcome {
            Outcome::Done(Ok(_)) => self.ok += 1,
            Outcome::Done(Err(_)) => self.err += 1,
            _ => self.waiting += 1,
        }
        self.max_steps = self.max_steps.max(trace.steps.len());
    }
}
