<#
.SYNOPSIS
  Install ComfyUI for Comfy Hybrid on Windows (see deploy\INSTALLER.md).

.DESCRIPTION
  Finds Python 3.10+ (installing Python 3.12 with winget if needed), makes a small venv
  holding only `requests`, and runs the installer core from this checkout
  (python -m workers.installer install): no Django needed. Every argument is passed on:
  --path DIR, --skip-models, --no-service, --no-start, --yes, --port N, --torch BUILD.
  Running it again resumes or repairs; finished steps are skipped.

.EXAMPLE
  powershell -NoProfile -ExecutionPolicy Bypass -File deploy\install-comfyui.ps1 --yes
#>
$ErrorActionPreference = 'Stop'
$RepoDir = Split-Path -Parent $PSScriptRoot
$VenvDir = if ($env:COMFY_INSTALLER_VENV) { $env:COMFY_INSTALLER_VENV } else {
    Join-Path $env:LOCALAPPDATA 'comfy-hybrid\installer-venv' }
$RequestsPin = 'requests==2.34.2'  # the same pin as requirements.txt

function Fail([string]$Cause, [string]$Fix) {
    Write-Host "error: $Cause" -ForegroundColor Red
    Write-Host "what to do: $Fix"
    exit 1
}

# Candidates in order of preference. `python` may be the Microsoft Store stub, which fails
# the version test below and is skipped.
$Candidates = @(
    @{ Command = 'py'; Arguments = @('-3.12') },
    @{ Command = 'py'; Arguments = @('-3.11') },
    @{ Command = 'py'; Arguments = @('-3.10') },
    @{ Command = 'py'; Arguments = @('-3') },
    @{ Command = 'python'; Arguments = @() },
    @{ Command = 'python3'; Arguments = @() }
)

function Find-Python {
    foreach ($candidate in $Candidates) {
        if (-not (Get-Command $candidate.Command -ErrorAction SilentlyContinue)) { continue }
        $arguments = $candidate.Arguments
        try {
            $found = & $candidate.Command @arguments -c 'import sys; print(sys.executable if sys.version_info >= (3, 10) else "")' 2>$null
        } catch { continue }
        if ($LASTEXITCODE -eq 0 -and $found -and $found.Trim()) { return $found.Trim() }
    }
    return $null
}

$Python = Find-Python
if (-not $Python) {
    Write-Host 'Python 3.10 or newer was not found: installing Python 3.12 with winget.'
    if (Get-Command winget -ErrorAction SilentlyContinue) {
        winget install --id Python.Python.3.12 --exact --scope user --accept-package-agreements --accept-source-agreements
        # winget changes PATH for new shells only: read it again for this one.
        $env:Path = [Environment]::GetEnvironmentVariable('Path', 'User') + ';' +
                    [Environment]::GetEnvironmentVariable('Path', 'Machine')
        $Python = Find-Python
    }
    if (-not $Python) {
        Fail 'Python 3.10 or newer was not found' ('install Python 3.12 from https://www.python.org/downloads/windows/ ' +
             '(tick "Add python.exe to PATH"), then run this script again')
    }
}
Write-Host "Using $Python"

$VenvPython = Join-Path $VenvDir 'Scripts\python.exe'
if (-not (Test-Path $VenvPython)) {
    New-Item -ItemType Directory -Force -Path (Split-Path -Parent $VenvDir) | Out-Null
    & $Python -m venv $VenvDir
    if ($LASTEXITCODE -ne 0) { Fail "could not create a virtual environment with $Python" 'reinstall Python from python.org, then run again' }
}
& $VenvPython -m pip install --quiet --disable-pip-version-check $RequestsPin
if ($LASTEXITCODE -ne 0) { Fail "could not install $RequestsPin into $VenvDir" 'check the connection to PyPI, then run again' }

# ComfyUI's own venv is made from the Python found above (a later --python wins).
$env:PYTHONPATH = if ($env:PYTHONPATH) { "$RepoDir;$env:PYTHONPATH" } else { $RepoDir }
& $VenvPython -m workers.installer install --python $Python @args
exit $LASTEXITCODE
