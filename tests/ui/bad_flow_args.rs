use flow_runtime::prelude::*;

#[flow(versoin = 2)]
async fn typo(ctx: &mut FlowContext) -> Result<(), FlowError> {
    let _ = ctx;
    Ok(())
}

#[flow(version = "two")]
async fn not_a_number(ctx: &mut FlowContext) -> Result<(), FlowError> {
    let _ = ctx;
    Ok(())
}

#[flow(version = 0)]
async fn zero(ctx: &mut FlowContext) -> Result<(), FlowError> {
    let _ = ctx;
    Ok(())
}

fn main() {}
