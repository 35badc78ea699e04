use flow_runtime::prelude::*;

#[flow]
fn sync(ctx: &mut FlowContext) -> Result<(), FlowError> {
    let _ = ctx;
    Ok(())
}

fn main() {}
