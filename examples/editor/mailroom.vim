" mailroom.vim: submit the buffer you are editing as a mailroom task.
"
"   :MailroomSubmit          submit the whole buffer
"   :'<,'>MailroomSubmit     submit the selected lines
"   :MailroomSubmit NAME     submit under the task name NAME
"
" The lines go to examples/editor/mailroom-task.sh on its standard input, which
" hands them to `mailroom add --file -`: the task is validated first (a typo in a
" key is reported with its line, and nothing is queued), then written through
" tasks/tmp/ into tasks/pending/. The buffer itself is not saved or changed.
"
" The task's name is NAME if given, else the buffer's file name without .yaml/.yml
" when it has one of those extensions, else a name mailroom generates. A name that
" is already taken is refused: give another with :MailroomSubmit NAME.
"
" There is no :MailroomSubmit! (submit and wait for the result): `mailroom add`
" has no --wait. Follow a task with `mailroom show NAME` or `ls tasks/*/`.
"
" Install: source this file from your vimrc, or copy it to ~/.vim/plugin/.
" Settings (optional):
"   let g:mailroom_root = '~/work/queue'    " the tree; default: $MAILROOM_ROOT, else Vim's cwd
"   let g:mailroom_task_script = '/path/to/mailroom-task.sh'
"                                           " default: the script next to this file
" `mailroom` must be on PATH (or set $MAILROOM_BIN to its full path).

if exists('g:loaded_mailroom')
  finish
endif
let g:loaded_mailroom = 1

" Resolved now: <sfile> means this file only while it is being sourced.
let s:default_script = expand('<sfile>:p:h') . '/mailroom-task.sh'

command! -nargs=? -range=% MailroomSubmit call s:Submit(<line1>, <line2>, <q-args>)

function! s:Submit(first, last, name) abort
  let l:script = expand(get(g:, 'mailroom_task_script', s:default_script))
  if !executable(l:script)
    echohl ErrorMsg
    echomsg 'mailroom: ' . l:script . ' is not an executable file (set g:mailroom_task_script)'
    echohl None
    return
  endif
  let l:cmd = [l:script]
  let l:root = get(g:, 'mailroom_root', '')
  if !empty(l:root)
    call extend(l:cmd, ['--root', expand(l:root)])
  endif
  let l:name = a:name
  if empty(l:name) && expand('%:e') =~# '^ya\=ml$'
    let l:name = expand('%:t:r')
  endif
  if !empty(l:name)
    call extend(l:cmd, ['--name', l:name])
  endif
  call add(l:cmd, '-')
  " The List is written one item per line; the empty item ends the last line.
  let l:out = system(join(map(l:cmd, 'shellescape(v:val)')), getline(a:first, a:last) + [''])
  let l:out = substitute(l:out, '\n\+$', '', '')
  if v:shell_error
    echohl ErrorMsg
    " mailroom's own messages already start with `mailroom:`.
    for l:line in split(l:out, "\n")
      echomsg l:line
    endfor
    echohl None
  else
    echomsg 'mailroom: submitted ' . l:out
  endif
endfunction
