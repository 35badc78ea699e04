use flow_runtime::prelude::*;

#[flow]
async fn labelled(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    #[state(Start)]
    let a: u32 = s.receive::<u32>().await?.validate(Ok)?;
    #[state(NoAwaitHere)]
    let b: u32 = a + 1;
    Ok(b)
}

fn main() {}
