-- Argo CD health of a flywheel.dev RetrainJob: its phase (Pending, Running, Evaluating,
-- Succeeded, Rejected, Failed) and its kstatus conditions (Ready, Reconciling, Stalled) with their
-- observedGeneration. A candidate the evaluation gate rejected is a finished, healthy run: the
-- gate did its job.
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function text(c)
  if c == nil then
    return ""
  end
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.reason or ""
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local ready = condition(status.conditions, "Ready")
local stalled = condition(status.conditions, "Stalled")
local reconciling = condition(status.conditions, "Reconciling")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. text(stalled)
  return hs
end
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "Failed"
  if ready ~= nil and text(ready) ~= "" then
    hs.message = "Failed: " .. text(ready)
  end
  return hs
end
if status.phase == "Rejected" then
  hs.status = "Healthy"
  hs.message = "Rejected"
  if ready ~= nil and text(ready) ~= "" then
    hs.message = "Rejected: " .. text(ready)
  end
  return hs
end
-- Succeeded and handed over (or kept, with promotion None); while the new version is being
-- handed to its ModelDeployment, Reconciling is still True.
if status.phase == "Succeeded" and (reconciling == nil or reconciling.status ~= "True") then
  hs.status = "Healthy"
  if ready ~= nil and text(ready) ~= "" then
    hs.message = text(ready)
  elseif status.result ~= nil and status.result.version ~= nil then
    hs.message = "Trained " .. status.result.version
  else
    hs.message = "Succeeded"
  end
  return hs
end
hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" and text(reconciling) ~= "" then
  hs.message = text(reconciling)
else
  hs.message = status.phase or "Pending"
end
return hs
