//! Runs one flow body both ways and compares: the `#[flow]` state machine
//! (under [`FlowDriver`], with and without a checkpoint round trip at every
//! suspension) against its plain `async fn` twin (under
//! [`run_plain`](crate::plain::run_plain)).

use crate::plain::{self, PlainFlow};
use crate::trace::{Counterparty, Input, Outcome, Script, StepTrace, Trace, TraceBuilder};
use flow_runtime::testing::{DriverError, FlowDriver, StepReport};
use flow_runtime::{Event, Flow, FlowError};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::fmt::Debug;

/// The two stamps of one flow body, each erased behind a closure that runs
/// it against a scripted counterparty.
///
/// Erasing the flow type here keeps the per-flow code small: everything
/// else in this module (proptest, comparing, reporting) is compiled once per
/// output type, not once per flow, which matters for the hundreds of
/// generated bodies.
pub struct Twins<'a, O> {
    generated: Box<RunGenerated<'a, O>>,
    plain: Box<RunPlain<'a, O>>,
}

/// Runs the `#[flow]` stamp on inputs, with or without checkpoint round trips.
type RunGenerated<'a, O> = dyn Fn(&[Input], bool) -> Trace<O> + 'a;
/// Runs the plain stamp on inputs.
type RunPlain<'a, O> = dyn Fn(&[Input]) -> Trace<O> + 'a;

impl<'a, O: 'static> Twins<'a, O> {
    /// `generated` builds the `#[flow]` machine at its start state;
    /// `plain` builds the plain twin (given the plain context, to make
    /// argument sessions with [`plain_session`](crate::plain::plain_session)).
    pub fn new<F: Flow<Output = O>>(
        generated: impl Fn() -> F + 'a,
        plain: impl Fn(&mut plain::FlowContext) -> PlainFlow<O> + 'a,
    ) -> Self {
        Self {
            generated: Box::new(move |inputs, round_trip| {
                let mut driver = FlowDriver::new(generated()).checkpoint_every_step(round_trip);
                run_driven(&mut driver, &mut Script::new(inputs))
            }),
            plain: Box::new(move |inputs| plain::run_plain(&plain, &mut Script::new(inputs))),
        }
    }
}

/// A [`FlowDriver`] with its flow type erased.
trait Driven<O> {
    fn start(&mut self) -> Result<StepReport, DriverError>;
    fn event(&mut self, event: Event) -> Result<StepReport, DriverError>;
    fn take_result(&mut self) -> Option<Result<O, FlowError>>;
}

impl<F: Flow> Driven<F::Output> for FlowDriver<F> {
    fn start(&mut self) -> Result<StepReport, DriverError> {
        FlowDriver::start(self).cloned()
    }

    fn event(&mut self, event: Event) -> Result<StepReport, DriverError> {
        match event {
            Event::Message { session, payload } => self.deliver_payload(session, payload),
            Event::SessionEnded { session, error } => self.end_session(session, error),
            Event::Timer => self.fire_timer(),
            Event::Start => FlowDriver::start(self),
        }
        .cloned()
    }

    fn take_result(&mut self) -> Option<Result<F::Output, FlowError>> {
        FlowDriver::take_result(self)
    }
}

/// Runs the generated state machine `flow` against `counterparty`. With
/// `round_trip`, the state is serialized and deserialized (rmp-serde) at
/// every suspension, as a durable node does.
pub fn run_generated<F: Flow>(
    flow: F,
    counterparty: &mut dyn Counterparty,
    round_trip: bool,
) -> Trace<F::Output> {
    let mut driver = FlowDriver::new(flow).checkpoint_every_step(round_trip);
    run_driven(&mut driver, counterparty)
}

fn run_driven<O>(driver: &mut dyn Driven<O>, counterparty: &mut dyn Counterparty) -> Trace<O> {
    let mut names = TraceBuilder::default();
    let mut steps = Vec::new();
    let mut next = catch(|| driver.start());
    loop {
        let report = match next {
            Ok(Ok(report)) => report,
            Err(panic) => {
                // The step's effects are lost with the panic, as on a node.
                steps.push(StepTrace::default());
                return Trace {
                    steps,
                    outcome: Outcome::Panicked(panic),
                };
            }
            Ok(Err(e)) => {
                return Trace {
                    steps,
                    outcome: Outcome::Broken(e.to_string()),
                };
            }
        };
        let mut step = StepTrace::default();
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
            let outcome = match driver.take_result() {
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
        next = catch(|| driver.event(event));
    }
}

/// Runs `f`, turning a panic into its message.
fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|payload| crate::trace::panic_message(payload.as_ref()))
}

/// Runs both twins against `inputs` and fails with both traces if they
/// differ in any send, wait or outcome — directly or with a checkpoint
/// round trip at every suspension.
pub fn compare<O: PartialEq + Debug>(
    twins: &Twins<'_, O>,
    inputs: &[Input],
) -> Result<Trace<O>, TestCaseError> {
    let reference = (twins.plain)(inputs);
    let direct = (twins.generated)(inputs, false);
    if direct != reference {
        return Err(TestCaseError::fail(format!(
            "the #[flow] machine and the plain async fn disagree\n\
             inputs: {inputs:?}\n#[flow]: {direct:#?}\nplain:  {reference:#?}"
        )));
    }
    let durable = (twins.generated)(inputs, true);
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
pub fn check_flow<O: PartialEq + Debug>(
    name: &str,
    max_inputs: usize,
    twins: &Twins<'_, O>,
) -> Result<Coverage, String> {
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    check_flow_with(config, name, max_inputs, twins)
}

/// [`check_flow`] with an explicit proptest configuration (e.g. fewer cases
/// for each of the hundreds of generated bodies).
pub fn check_flow_with<O: PartialEq + Debug>(
    config: Config,
    name: &str,
    max_inputs: usize,
    twins: &Twins<'_, O>,
) -> Result<Coverage, String> {
    let mut runner = TestRunner::new(config);
    let coverage = std::cell::RefCell::new(Coverage::default());
    let result = runner.run(&crate::trace::inputs(max_inputs), |inputs| {
        let trace = compare(twins, &inputs)?;
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
    /// Runs that panicked (identically on both sides).
    pub panicked: usize,
    /// The largest number of steps (suspensions + 1) in one run.
    pub max_steps: usize,
}

impl Coverage {
    fn record<O>(&mut self, trace: &Trace<O>) {
        match trace.outcome {
            Outcome::Done(Ok(_)) => self.ok += 1,
            Outcome::Done(Err(_)) => self.err += 1,
            Outcome::Panicked(_) => self.panicked += 1,
            _ => self.waiting += 1,
        }
        self.max_steps = self.max_steps.max(trace.steps.len());
    }
}
