use flow_runtime::prelude::*;

#[flow]
async fn lazy(ctx: &mut FlowContext, s: FlowSession, ask: bool) -> Result<bool, FlowError> {
    let yes: bool = ask && s.receive::<bool>().await?.validate(Ok)?;
    Ok(yes)
}

fn main() {}
