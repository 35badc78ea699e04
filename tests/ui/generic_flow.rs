use flow_runtime::prelude::*;

#[flow]
async fn echo<T: serde::Serialize>(ctx: &mut FlowContext, s: FlowSession, v: T) -> Result<(), FlowError> {
    s.send(&v)?;
    Ok(())
}

fn main() {}
